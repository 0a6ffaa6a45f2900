"""The job skeleton every stage runs: plan -> units -> staging -> atomic commit -> ledger -> publish.

    with Job(out_dir, "stage.json", settings, "units", StageError) as job:  # folder checked, locked,
        specs, skipped = job.plan(items, unit_size, member_key, "u", "inputs")  # staging cleaned
        errors = job.run(stage_unit, specs, weight, "stage", "item", workers, scheduler, progress)
        job.publish(lambda: write_outputs(out_dir, job.records()), "writing outputs.parquet")

- The folder: a new (or empty) `out_dir` gets `settings` as `settings_name` and `subfolder` for the
  units; an existing one must hold the same settings, so a run is resumed and never mixed with another.
- The plan: sorted items in units of `unit_size`, each named by a hash of its members, so the same
  items give the same units whatever the runner; units already in the ledger are skipped.
- A unit function (run by runners.run_units, in this process or on dask workers) writes its output
  under a staging name and publishes it by one rename (latte_core.atomic.staged), then returns its
  ledger record; the job appends it (runners.run_and_commit). A unit that raises is reported, not
  recorded, and re-run next time; DiskFull cancels the job.
- Publishing (manifest, index, failures tables) happens after the units, from the ledger records.

To add a stage: its settings dict, its unit function `unit(spec) -> record` (commit with `staged`, write
nothing visible before), its member key for the unit ids, and its publish step; the rest is this class.
"""
import hashlib
import json
import logging
import os
import queue
import shutil
import threading

import pyarrow.parquet as pq

from latte_core.atomic import make_output_dir, remove_staging, sha256_of, write_atomically, write_json_atomically
from latte_core.errors import DiskFull, UserError
from latte_toolkit.datasets.storage import (LEDGER_PREFIX, StorageError, StoreLock, clear_folder, fetch_verified,
                                            is_url, open_store, read_store_ledger, scratch_for)

from .ledger import JobLock, Ledger, disk_full_error, is_disk_full, write_error
from .runners import run_and_commit

logger = logging.getLogger(__name__)


def plan_units(items, unit_size, member_key, prefix, members_name, done_ids=()):
    """Split the sorted items into units of `unit_size`: specs {"unit_id", members_name: members} for
    the units not in `done_ids`, and how many were. A unit's id is `prefix`-<sha1 of its members'
    keys>, so it depends on the members only."""
    pending, done = [], 0
    for start in range(0, len(items), unit_size):
        members = items[start:start + unit_size]
        key = json.dumps([member_key(member) for member in members])
        unit_id = f"{prefix}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
        if unit_id in done_ids:
            done += 1
        else:
            pending.append({"unit_id": unit_id, members_name: members})
    return pending, done


def open_job_folder(out_dir, settings_name, settings, subfolder, error=ValueError):
    """Create `out_dir` for a job with `settings` (saved as `settings_name`), or check that an existing
    one was made with the same settings, so runs are resumed and never mixed. Raises `error`."""
    settings_path = os.path.join(out_dir, settings_name)
    if os.path.exists(settings_path):
        with open(settings_path) as handle:
            previous = json.load(handle)
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise error(f"{out_dir} holds a run made with other settings ({', '.join(changed)} differ); refusing "
                        f"to mix them: use a new --out folder, or the same settings to resume")
        return
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise error(f"{out_dir} is not empty and holds no {settings_name}; choose an empty or new folder")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise error(f"{out_dir} is a file, not a folder; choose an empty or new folder")
    make_output_dir(out_dir, "--out", create=False, error=error)  # a file in the way, a read-only parent: named
    try:
        os.makedirs(os.path.join(out_dir, subfolder), exist_ok=True)
        write_json_atomically(settings_path, settings)
    except OSError as err:
        raise write_error(err, out_dir, "creating the job folder", error) from None


def write_unit_table(out_dir, unit_id, table):
    """Commit a unit's rows (a pyarrow Table) as OUT_DIR/units/<unit_id>.parquet by one rename; returns
    its path. A full disk is DiskFull naming the unit."""
    part = os.path.join(out_dir, "units", f"{unit_id}.parquet")
    try:
        write_atomically(part, lambda tmp: pq.write_table(table, tmp))
    except Exception as err:
        if is_disk_full(err):
            raise disk_full_error(out_dir, f"writing unit {unit_id}") from None
        raise
    return part


def read_unit_table(out_dir, record):
    """The rows of a committed unit's table, checked against the sha256 its ledger record holds."""
    part = os.path.join(out_dir, "units", f"{record['unit_id']}.parquet")
    if not os.path.isfile(part) or sha256_of(part) != record["sha256"]:
        raise UserError(f"{part} does not match its ledger checksum: the folder was modified")
    return pq.read_table(part).to_pylist()


class Job:
    """One run of a stage in its job folder (see the module docstring); a context manager holding the
    folder's lock. `error` is the stage's UserError class, raised for a folder that cannot be used.

    `out_dir` may be an object-store URL (datasets/storage.py): see StoreJob's docstring below. There the
    units write into `work_dir`, a local scratch folder, and `unit_paths(record)` names the paths (files or
    folders, relative to it) a unit's record owns, which the job uploads before the record. Locally
    `work_dir` is `out_dir` and nothing changes."""

    def __new__(cls, out_dir, *args, **kwargs):
        if cls is Job and is_url(out_dir):
            return super().__new__(StoreJob)
        return super().__new__(cls)

    def __init__(self, out_dir, settings_name, settings, subfolder, error, storage_options=None, unit_paths=None,
                 break_lock=False, keep_units_local=False):
        self.out_dir, self.subfolder, self.error = out_dir, subfolder, error
        self.work_dir = out_dir
        open_job_folder(out_dir, settings_name, settings, subfolder, error)
        self.lock = JobLock(out_dir)
        self.ledger = None

    def __enter__(self):
        self.lock.__enter__()
        try:
            try:
                removed = (remove_staging(os.path.join(self.out_dir, self.subfolder))
                           + remove_staging(self.out_dir))
            except OSError as err:
                raise write_error(err, self.out_dir, "removing the staging files of an interrupted run",
                                  self.error) from None
            if removed:
                logger.info("removed %d staging item(s) left by an interrupted run", removed)
            self.ledger = Ledger(self.out_dir)
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.lock.__exit__(*exc)

    def records(self):
        """The committed unit records, in commit order."""
        return self.ledger.records()

    def plan(self, items, unit_size, member_key, prefix, members_name):
        """plan_units over `items`, skipping the units already in the ledger."""
        return plan_units(items, unit_size, member_key, prefix, members_name,
                          {record["unit_id"] for record in self.records()})

    def run(self, work, specs, weight, desc, unit, workers=1, scheduler=None, progress=True):
        """Run the unit specs and ledger each result (runners.run_and_commit); a full disk cancels the
        job, and so does an object store that fails. Returns the ids of the units that raised."""
        return run_and_commit(work, specs, self.ledger, weight, desc, unit, workers, scheduler, progress,
                              stop_on=(DiskFull, StorageError))

    def publish(self, step, doing, outputs=()):
        """Run the publish step (writing the job's tables, each by latte_core.atomic); a folder that
        refuses the write is the stage's error naming it, a full disk DiskFull. `outputs`: the files the
        step writes into work_dir, in the order an object store receives them (the manifest or index
        last)."""
        try:
            return step()
        except OSError as err:
            raise write_error(err, self.out_dir, doing, self.error) from None

    def localize(self, records):
        """Make the records' unit files present in work_dir (locally they are)."""


class StoreJob(Job):
    """A job whose folder is an object-store prefix, safe without rename:

    - the settings object (`ingest.json`, ...) is checked or written as locally; the lock is StoreLock
      (a conditional PUT of `.lock`, a heartbeat, `break_lock` for a stale one);
    - on start the unfinished multipart uploads under the prefix are aborted, every record is checked
      (its objects' sizes from one listing, their sha256 from their metadata; a record whose objects do
      not match is dropped and its unit redone), and objects under the units' subfolder that no record
      names (a killed run's) are deleted;
    - a unit runs into the local scratch `work_dir` (rename-based as locally); its objects are then PUT
      under their final keys, each atomic, and its record is PUT last as `ledger/<seq>-<unit_id>.json`
      with the sizes and sha256 of those objects: "done" means that record object exists;
    - publish writes the tables locally and uploads them in the order given, the manifest or index last.
    """

    def __init__(self, out_dir, settings_name, settings, subfolder, error, storage_options=None, unit_paths=None,
                 break_lock=False, keep_units_local=False):
        self.out_dir, self.subfolder, self.error = out_dir, subfolder, error
        self.store = open_store(out_dir, storage_options, "--out")
        self.work_dir = scratch_for(self.store.url, "jobs")
        self.settings_name, self.settings = settings_name, settings
        self.unit_paths, self.keep_units_local = unit_paths, keep_units_local
        self._check_folder()
        self.lock = StoreLock(self.store, break_lock)
        self.ledger = None

    def _check_folder(self):
        keys = self.store.listing()
        if self.settings_name in keys:
            previous = self.store.read_json(self.settings_name)
            if previous != self.settings:
                changed = sorted(k for k in set(previous) | set(self.settings)
                                 if previous.get(k) != self.settings.get(k))
                raise self.error(f"{self.store.url} holds a run made with other settings ({', '.join(changed)} "
                                 f"differ); refusing to mix them: use a new --out, or the same settings to resume")
        elif any(not key.startswith(".lock") for key in keys):
            raise self.error(f"{self.store.url} is not empty and holds no {self.settings_name}; choose an empty or "
                             f"new prefix")

    def __enter__(self):
        self.lock.__enter__()
        try:
            if not self.store.exists(self.settings_name):
                self.store.put_json(self.settings_name, self.settings)
            aborted = self.store.abort_uploads()
            if aborted:
                logger.info("aborted %d unfinished multipart upload(s) of an interrupted run", aborted)
            self.ledger = StoreLedger(self)
            clear_folder(self.work_dir)
            os.makedirs(os.path.join(self.work_dir, self.subfolder), exist_ok=True)
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self

    def localize(self, records):
        for record in records:
            for key, meta in record.get("objects", {}).items():
                local = os.path.join(self.work_dir, key)
                if not os.path.isfile(local):
                    fetch_verified(self.store, key, local, meta["size"], meta["sha256"])

    def run(self, work, specs, weight, desc, unit, workers=1, scheduler=None, progress=True):
        if scheduler is not None:  # its workers on other machines would write into this machine's scratch
            raise self.error(f"{self.store.url}: an existing dask scheduler with an object-store --out is not supported "
                             f"(the units write into this machine's scratch before their upload); use --workers")
        return super().run(work, specs, weight, desc, unit, workers, scheduler, progress)

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.ledger is not None:  # the finished units' uploads complete, whatever stopped the job
                self.ledger.close(raise_errors=exc_type is None)
        finally:
            self.lock.__exit__(exc_type, exc, tb)

    def publish(self, step, doing, outputs=()):
        self.ledger.flush()
        result = super().publish(step, doing)
        self.lock.check()
        for name in outputs:
            self.store.put_file(os.path.join(self.work_dir, name), name)
        return result


IN_FLIGHT = 2  # finished units of a StoreJob waiting for their upload (their files stay in the scratch till then)


class StoreLedger:
    """The ledger of a StoreJob: one record object per unit under ledger/ (see StoreJob)."""

    def __init__(self, job):
        self.job, self.store = job, job.store
        found = read_store_ledger(self.store)
        listing = self.store.listing()
        valid, named = [], set()
        for record in found:
            problem = self._problem(record, listing)
            if problem:
                logger.warning("%s: %s; its unit is redone", self.store.url_of(record["_key"]), problem)
                self.store.remove([record["_key"]])
                continue
            valid.append(record)
            named.update(record.get("objects", {}))
        stray = [key for key in listing if key.startswith(job.subfolder + "/") and key not in named]
        if stray:
            logger.info("deleting %d object(s) no record names (left by an interrupted run)", len(stray))
            self.store.remove(stray)
        self._records = valid
        self._queue, self._thread, self._error = queue.Queue(IN_FLIGHT), None, None
        self._seq = 1 + max((int(r["_key"][len(LEDGER_PREFIX):].split("-")[0]) for r in found), default=0)

    def _problem(self, record, listing):
        for key, meta in record.get("objects", {}).items():
            if key not in listing:
                return f"its object {key} is missing"
            if listing[key] != meta["size"]:
                return f"its object {key} holds {listing[key]} bytes, the record says {meta['size']}"
            stored = self.store.stored_sha256(key)
            if stored is not None and stored != meta["sha256"]:
                return f"its object {key} has another sha256 than the record says"
        return None

    def records(self):
        """The committed records (after the uploads in flight: see flush)."""
        self.flush()
        return [{k: v for k, v in record.items() if k != "_key"} for record in self._records]

    def append(self, record):
        """Queue a finished unit for its upload (objects, then its record) by one thread in commit order,
        so the next unit computes meanwhile; at most IN_FLIGHT units wait (the scratch holds only those).
        An upload that failed is raised here, at the next unit, or by flush."""
        self._raise()
        self.job.lock.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._uploads, name="latte-unit-upload", daemon=True)
            self._thread.start()
        self._queue.put(record)

    def _uploads(self):
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                if self._error is None:
                    self._commit(record)
            except BaseException as err:  # kept for the job's thread
                self._error = err
            finally:
                self._queue.task_done()

    def _raise(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush(self):
        """Wait for the uploads in flight; raise the first that failed."""
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self, raise_errors=True):
        if self._thread is not None:
            self._queue.join()
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if raise_errors:
            self._raise()

    def _commit(self, record):
        work = self.job.work_dir
        pairs, uploaded = [], []
        for rel in self.job.unit_paths(record):
            local = os.path.join(work, rel)
            files = ([rel] if os.path.isfile(local)
                     else [f"{rel}/{name}" for name in sorted(os.listdir(local))])
            pairs += [(os.path.join(work, name), name) for name in files]
            uploaded.append(local)
        objects = {key: {"size": size, "sha256": digest}
                   for key, (size, digest) in self.store.put_files(pairs).items()}
        key = f"{LEDGER_PREFIX}{self._seq:08d}-{record['unit_id']}.json"
        self.store.put_json(key, {**record, "objects": objects})
        self._seq += 1
        self._records.append({**record, "objects": objects, "_key": key})
        if not self.job.keep_units_local:  # the scratch holds the units in flight only
            for local in uploaded:
                shutil.rmtree(local) if os.path.isdir(local) else os.remove(local)
