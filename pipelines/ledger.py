"""The record of committed units of a job, and the atomic commit of a unit's output.

A unit's output becomes visible by one `os.replace` of a finished file; only then is one line
appended to `ledger.jsonl` (one write, fsynced). "Done" means "in the ledger": a killed job leaves
at most a torn last line (ignored and cut off on the next open) and unledgered files (redone); a full
disk leaves no partial line (the append is undone) and raises DiskFull.
"""
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid

from latte_toolkit.datasets.cache import read_ledger
from latte_core.errors import DiskFull, UserError

STAGING_PREFIX = ".staging-"


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def staging_path(folder, name):
    """A unique temporary name next to the final one (same filesystem, so the rename is atomic)."""
    return os.path.join(folder, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def remove_abandoned_staging(folder):
    """Delete the staging files and folders a killed run left behind; returns how many."""
    if not os.path.isdir(folder):
        return 0
    stale = [entry for entry in os.scandir(folder) if entry.name.startswith(STAGING_PREFIX)]
    for entry in stale:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)
    return len(stale)


def is_disk_full(err):
    """Whether `err` says the device is full or the quota used up (pyarrow words it in its message)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, Exception) and ("No space left on device" in str(err) or "Disk quota exceeded" in str(err))


def disk_full_error(folder, doing):
    return DiskFull(f"no space left on the device holding {folder} while {doing}; every unit committed before "
                    f"is intact: free space and re-run the same command to resume")


def write_error(err, folder, doing, error=UserError):
    """The error to raise for an OSError met while writing into the job folder `folder`: DiskFull for a
    full disk, else `error` naming the folder (read-only, no permission, not a folder, ...)."""
    if is_disk_full(err):
        return disk_full_error(folder, doing)
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return error(f"{folder}: cannot write the job folder ({reason}) while {doing}; choose a writable --out")


def write_atomically(path, write):
    """Call write(tmp_path), then move tmp_path onto `path` in one rename; nothing is left on error."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = staging_path(folder, os.path.basename(path))
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(path, data):
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
    write_atomically(path, write)


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
    try:
        os.makedirs(os.path.join(out_dir, subfolder), exist_ok=True)
        write_json_atomically(settings_path, settings)
    except OSError as err:
        raise write_error(err, out_dir, "creating the job folder", error) from None


class Ledger:
    """Append-only JSON-lines file of unit records, each with a "unit_id"."""

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, "ledger.jsonl")
        self._cut_torn_tail()

    def _cut_torn_tail(self):
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as handle:
            data = handle.read()
        if data and not data.endswith(b"\n"):
            try:
                os.truncate(self.path, data.rfind(b"\n") + 1)  # a record cut by a kill: its unit is redone
            except OSError as err:
                raise write_error(err, self.folder, "cutting the torn last line of its ledger") from None

    def records(self):
        """All complete records, in commit order (UserError naming the line if one is not a record)."""
        return read_ledger(self.folder)

    def append(self, record):
        """Append one line in one write on an O_APPEND descriptor; on any failure (a full disk: DiskFull)
        the file is cut back to its previous size, so no partial line is ever left."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(err, self.folder, "opening its ledger") from None
        try:
            size = os.fstat(fd).st_size  # the JobLock makes this process the only writer
            try:
                written = 0
                while written < len(line):  # a nearly full disk can take part of a write, then refuse
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except BaseException as err:
                try:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                except OSError:
                    pass
                if isinstance(err, OSError):
                    raise write_error(err, self.folder, f"appending unit {record.get('unit_id')} to its "
                                                        f"ledger") from None
                raise
        finally:
            os.close(fd)


class JobLock:
    """An exclusive lock on a job folder, so two runs never write into it at once."""

    def __init__(self, folder):
        self.path = os.path.join(folder, ".lock")
        self.handle = None

    def __enter__(self):
        try:
            self.handle = open(self.path, "a")
        except OSError as err:
            raise write_error(err, os.path.dirname(self.path), "taking its lock") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise UserError(f"{os.path.dirname(self.path)} is being written by another running job") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
