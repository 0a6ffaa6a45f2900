"""Stage 1, ingest: find the videos, check they decode, record what they are.

    sources ─ discover ─▶ inputs (sorted by video_id) ─ plan ─▶ units of `unit_size` inputs
      └ each unit (any runner): probe every input in a killable child ─▶ units/<unit_id>.parquet
        (atomic rename) ─▶ one ledger row ─▶ at the end manifest.parquet + failures.parquet

A unit's id is a hash of its members, so the same inputs give the same plan whatever the number of
workers, and a re-run skips every unit already in the ledger.
"""
import csv
import io
import json
import logging
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from latte_core.atomic import sha256_of, write_atomically
from latte_core.errors import UserError
from latte_toolkit.datasets.storage import ObjectMissing, is_url, local_copy, normalized, open_store
from latte_toolkit.datasets.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, natural_key

from .decode_worker import DecodeWorker
from .jobs import Job, plan_units, read_unit_table, write_unit_table
from .runners import check_workers

logger = logging.getLogger(__name__)

LIST_EXTENSIONS = (".csv", ".json")
INGEST_VERSION = 1  # ingest.json's "version": the manifest's layout, which later stages check
MANIFEST_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("kind", pa.string()), ("num_frames", pa.int64()),
    ("fps", pa.float64()), ("height", pa.int64()), ("width", pa.int64()), ("label", pa.int64()),
    ("caption", pa.string()),
])
FAILURE_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("kind", pa.string()), ("category", pa.string()),
    ("message", pa.string()),
])
# every row of a unit's part file: the manifest columns, then the outcome
UNIT_SCHEMA = pa.schema(list(MANIFEST_SCHEMA) + [("category", pa.string()), ("message", pa.string())])


class IngestError(UserError):
    """Bad usage of the ingest stage (a missing source, an output folder of another job)."""


# ------------------------------------------------------------------------------------------ discovery
# failures decided while finding the inputs (no decode): part of a unit's identity, never re-tried
BAD_NAME = "bad name"
DISCOVERY_FAILURES = ("duplicate", BAD_NAME)


def discover(sources, storage_options=None):
    """Inputs {video_id, path, kind, label, caption} from source paths, sorted by video_id.

    A folder is walked recursively: video files are inputs, and so is every folder that holds images
    directly (a frame folder) or holds nothing at all (an empty frame folder, reported as failed); a
    folder is a folder whatever its name ends in, and a symbolic link back to a folder being walked
    (a loop) is skipped with a warning.
    A .csv/.json file lists videos in a `video` column (paths relative to the list's folder), with
    optional `caption` and `class`. Ids are paths relative to the source root (the list's folder).
    A source that yields no input is an IngestError. Inputs that resolve to the same file
    (os.path.realpath) are one input, the first in sorted order; an id reached by different files
    is kept by the first, the others fail as "duplicate". A name that is not valid UTF-8 fails as
    "bad name" (its id and path shown with backslash escapes).
    """
    inputs = []
    for source in sources:
        if is_url(source):
            inputs.extend(_discover_url(normalized(source), storage_options))
            continue
        source = normalized(source)
        if os.path.isdir(source):
            found = _walk(source)
            if not found:
                raise IngestError(f"{source}: no input in this folder: {_why_empty(source)}")
        elif os.path.isfile(source) and source.lower().endswith(LIST_EXTENSIONS):
            found = _read_list(source)
            if not found:
                raise IngestError(f"{source}: the list names no video (no entry after its header)")
        elif os.path.isfile(source) and source.lower().endswith(VIDEO_EXTENSIONS):
            found = [_input(os.path.basename(source), source, "video")]
        elif os.path.islink(source) and not os.path.exists(source):
            raise IngestError(f"{source}: a broken symbolic link (to {os.readlink(source)})")
        else:
            raise IngestError(f"{source}: not a folder, a video file ({', '.join(VIDEO_EXTENSIONS)}) "
                              f"or a .csv/.json list")
        inputs.extend(found)
    inputs.sort(key=lambda item: (item["video_id"], item["path"]))
    unique, files, owners = [], set(), {}
    for item in inputs:
        real = item.pop("real")
        if real in files:
            continue  # the same file or folder reached twice (a repeated source or list entry, a link)
        files.add(real)
        if item.get("failure") is None:
            if item["video_id"] in owners:
                item["failure"] = ("duplicate", f"{item['path']}: video id {item['video_id']!r} is already taken "
                                                f"by {owners[item['video_id']]}")
            else:
                owners[item["video_id"]] = item["path"]
        unique.append(item)
    if len(unique) < len(inputs):
        logger.info("%d input(s) resolve to a file or folder already found: counted once",
                    len(inputs) - len(unique))
    return unique


def _why_empty(folder):
    """Why a source folder yields nothing, as a hint for the error message."""
    try:
        names = os.listdir(folder)
    except OSError as err:
        return f"it cannot be listed ({err.strerror})"
    if any(name.lower().endswith(IMAGE_EXTENSIONS) for name in names):
        return ("it holds frames directly; give its parent folder as --source to ingest it as one frame "
                "folder")
    suffix = " (it is a folder although its name ends like a video's)" if folder.lower().endswith(
        VIDEO_EXTENSIONS) else ""
    return f"no video files and no frame folders{suffix}"


def _is_utf8(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # surrogates: undecodable bytes of a file name, or a lone escape
        return False


def printable(text):
    """`text` as valid UTF-8: the bytes of a file name that are not UTF-8 as backslash escapes."""
    if _is_utf8(text):
        return text
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _input(video_id, path, kind, label=None, caption=None, failure=None):
    """One input; "real" (its resolved path, for discover) is removed before it is planned."""
    item = {"video_id": video_id.replace(os.sep, "/"), "path": path, "kind": kind, "label": label,
            "caption": caption, "real": path if is_url(path) else os.path.realpath(path)}
    if not _is_utf8(path) or not _is_utf8(item["video_id"]):
        item.update(video_id=printable(item["video_id"]), path=printable(path))
        failure = (BAD_NAME, f"{item['path']}: the name is not valid UTF-8 (its other bytes are shown as \\x "
                             f"escapes); rename it to ingest it")
    elif caption is not None and not _is_utf8(caption):
        item["caption"] = printable(caption)
        failure = (BAD_NAME, f"{path}: its caption is not valid UTF-8 text")
    if failure is not None:
        item["failure"] = failure
    return item


def _walk(root):
    found = []
    stack = [(root, (os.path.realpath(root),))]  # a folder, and the real paths of it and its parents
    while stack:
        folder, chain = stack.pop()
        subfolders, has_images, has_entries = [], False, False
        try:
            with os.scandir(folder) as entries:
                entries = list(entries)
        except OSError as err:
            if folder == root:
                raise IngestError(f"{root}: cannot list the folder ({err.strerror})") from None
            found.append(_input(os.path.relpath(folder, root), folder, "frames",
                                failure=("unreadable", f"{folder}: cannot list the folder ({err.strerror})")))
            continue
        for entry in entries:
            has_entries = True
            name = entry.name.lower()
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:  # a link in a loop of links: nothing to follow
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real in chain:
                    logger.warning("%s: a symbolic link back to %s (a loop): not followed",
                                   printable(entry.path), printable(real))
                else:
                    subfolders.append((entry.name, entry.path, chain + (real,)))
            elif name.endswith(VIDEO_EXTENSIONS):
                failure = None
                if entry.is_symlink() and not os.path.exists(entry.path):
                    failure = ("missing", f"{printable(entry.path)}: a broken symbolic link (to "
                                          f"{printable(os.readlink(entry.path))})")
                found.append(_input(os.path.relpath(entry.path, root), entry.path, "video", failure=failure))
            elif name.endswith(IMAGE_EXTENSIONS):
                has_images = True
        if folder != root and (has_images or not has_entries):
            found.append(_input(os.path.relpath(folder, root), folder, "frames"))
        stack.extend((path, parents) for _, path, parents in sorted(subfolders, key=lambda sub: natural_key(sub[0])))
    return found


def _read_list(path, text=None, remote_kinds=None):
    """The inputs a .csv/.json list names. `text`: the list's contents when it lives in an object store
    (`path` its URL), `remote_kinds`: {relative key: "video" | "frames"} of the objects beside it."""
    folder = path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)
    try:
        if text is None:
            with open(path, "rb") as handle:
                text = handle.read()
        text = text.decode()
        if path.lower().endswith(".json"):
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise IngestError(f"{path}: expected a JSON list of objects with a 'video' key")
        else:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (OSError, ValueError, csv.Error) as err:
        raise IngestError(f"{path}: unreadable list ({err})") from None
    found = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("video"):
            raise IngestError(f"{path}: entry {number} has no 'video' path")
        label = row.get("class")
        try:
            label = None if label in (None, "") else int(label)
        except ValueError:
            raise IngestError(f"{path}: entry {number} has a non-integer class {label!r}") from None
        entry = str(row["video"])
        if is_url(entry):  # an object named in full: its id is the entry as written
            kind = "video" if entry.lower().endswith(VIDEO_EXTENSIONS) else "frames"
            found.append(_input(entry, normalized(entry), kind, label, row.get("caption") or None))
            continue
        relative = os.path.normpath(entry)
        if remote_kinds is not None:
            full = f"{folder}/{relative}"
            kind = remote_kinds.get(relative, "video" if relative.lower().endswith(VIDEO_EXTENSIONS) else "frames")
        else:
            full = os.path.join(folder, relative)
            kind = "frames" if os.path.isdir(full) else "video"
        found.append(_input(relative, full, kind, label, row.get("caption") or None))
    return found


def _discover_url(source, storage_options):
    """The inputs of an object-store source: a video object, a .csv/.json list object, or a prefix whose
    video objects and frame folders (prefixes holding images directly) are its inputs."""
    lower = source.lower()
    if lower.endswith(VIDEO_EXTENSIONS + LIST_EXTENSIONS):
        parent, name = source.rsplit("/", 1)
        store = open_store(parent, storage_options, "--source")
        if not store.exists(name):
            raise IngestError(f"{source}: no such object")
        if lower.endswith(VIDEO_EXTENSIONS):
            return [_input(name, source, "video")]
        found = _read_list(source, store.cat(name), _remote_kinds(store.listing()))
        if not found:
            raise IngestError(f"{source}: the list names no video (no entry after its header)")
        return found
    store = open_store(source, storage_options, "--source")
    kinds = _remote_kinds(store.listing())
    if not kinds:
        raise IngestError(f"{source}: no input under this prefix (no video object, no folder of images)")
    return [_input(key, f"{source}/{key}", kind) for key, kind in sorted(kinds.items())]


def _remote_kinds(keys):
    """{key: "video"} for video objects and {prefix: "frames"} for prefixes holding images directly."""
    kinds = {}
    for key in keys:
        name = key.lower()
        if name.endswith(VIDEO_EXTENSIONS):
            kinds[key] = "video"
        elif name.endswith(IMAGE_EXTENSIONS) and "/" in key:
            kinds[key.rsplit("/", 1)[0]] = "frames"
    return kinds


# ------------------------------------------------------------------------------------------ planning
def _member_key(member):
    """What names an input in its unit's id: id, path and its discovery failure if any (so a unit whose
    duplicate or broken link is resolved is run again)."""
    return [member["video_id"], member["path"]] + ([member["failure"][0]] if member.get("failure") else [])


# ------------------------------------------------------------------------------------------ the unit
_DECODERS = {}


def _decoder(timeout):
    """One decode child per worker process and timeout, reused across units."""
    if timeout not in _DECODERS:
        _DECODERS[timeout] = DecodeWorker(timeout)
    return _DECODERS[timeout]


def ingest_unit(spec):
    """Probe every input of one unit and commit units/<unit_id>.parquet; returns the ledger record."""
    started = time.perf_counter()
    decoder = _decoder(spec["timeout"])
    rows = []
    for item in spec["inputs"]:
        row = {name: item.get(name) for name in ("video_id", "path", "kind", "label", "caption")}
        row.update(num_frames=None, fps=None, height=None, width=None, category=None, message=None)
        if item.get("failure"):
            row["category"], row["message"] = item["failure"]
        else:
            answer = _probe(decoder, item, spec)
            if not answer.pop("ok"):
                row["category"], row["message"] = answer["category"], answer["message"]
            else:
                row.update(answer)
                if spec["min_frames"] and answer["num_frames"] < spec["min_frames"]:
                    row["category"] = "too short"
                    row["message"] = (f"{item['path']}: {answer['num_frames']} frames, a clip of "
                                      f"{spec['num_frames']} frames with stride {spec['sample_stride']} "
                                      f"needs {spec['min_frames']}")
        if row["message"] is not None:
            row["message"] = printable(row["message"])  # a decoder's words are not always UTF-8
        rows.append(row)
    probe_seconds = time.perf_counter() - started
    part = write_unit_table(spec["out_dir"], spec["unit_id"], pa.Table.from_pylist(rows, schema=UNIT_SCHEMA))
    failed = sum(row["category"] is not None for row in rows)
    return {
        "unit_id": spec["unit_id"], "attempt": spec["attempt"], "inputs": len(rows), "ok": len(rows) - failed,
        "failed": failed, "frames": sum(row["num_frames"] or 0 for row in rows if row["category"] is None),
        "bytes": os.path.getsize(part), "sha256": sha256_of(part), "probe_seconds": round(probe_seconds, 4),
        "write_seconds": round(time.perf_counter() - started - probe_seconds, 4),
    }


def _probe(decoder, item, spec):
    """The decoder's answer for an input; one in an object store is fetched to the scratch area first
    (deleted after), its messages naming the URL. A missing object fails as "missing"."""
    if not is_url(item["path"]):
        return decoder.probe(item["kind"], item["path"], spec["verify"])
    try:
        with local_copy(item["path"], item["kind"], spec.get("storage_options")) as local:
            answer = decoder.probe(item["kind"], local, spec["verify"])
    except ObjectMissing:
        return {"ok": False, "category": "missing", "message": f"{item['path']}: no such object"}
    if "message" in answer:
        answer["message"] = answer["message"].replace(local, item["path"])
    return answer


# ------------------------------------------------------------------------------------------ the job
def _job_settings(sources, num_frames, sample_stride, verify, unit_size):
    """What decides the rows: a folder written with other settings is not resumed with these."""
    return {"sources": sorted(normalized(s) for s in sources), "num_frames": num_frames,
            "sample_stride": sample_stride, "verify": verify, "unit_size": unit_size, "version": INGEST_VERSION}


def latest_rows(out_dir, ledger_records):
    """The newest row per input (video_id, path) over all committed units (a retry supersedes the
    failure it retried), sorted by video_id then path. One video id is usable once: a usable row of
    an id already usable with a path that sorts first becomes a "duplicate" failure."""
    latest = {}
    for record in ledger_records:
        for row in read_unit_table(out_dir, record):
            latest[(row["video_id"], row["path"])] = row
    rows, owners = [], {}
    for key in sorted(latest):
        row = latest[key]
        if row["category"] is None:
            if row["video_id"] in owners:
                row = {**row, "category": "duplicate", "message": f"{row['path']}: video id {row['video_id']!r} "
                                                                  f"is already taken by {owners[row['video_id']]}"}
            else:
                owners[row["video_id"]] = row["path"]
        rows.append(row)
    return rows


def _assemble(out_dir, rows):
    ok = [row for row in rows if row["category"] is None]
    failed = [row for row in rows if row["category"] is not None]
    manifest = pa.Table.from_pylist([{k: r[k] for k in MANIFEST_SCHEMA.names} for r in ok], schema=MANIFEST_SCHEMA)
    failures = pa.Table.from_pylist([{k: r[k] for k in FAILURE_SCHEMA.names} for r in failed], schema=FAILURE_SCHEMA)
    write_atomically(os.path.join(out_dir, "manifest.parquet"), lambda tmp: pq.write_table(manifest, tmp))
    write_atomically(os.path.join(out_dir, "failures.parquet"), lambda tmp: pq.write_table(failures, tmp))
    return ok, failed


def run_ingest(sources, out_dir, num_frames=None, sample_stride=1, verify=False, workers=1, scheduler=None,
               retry_failed=False, timeout=60.0, unit_size=32, progress=True, storage_options=None, break_lock=False):
    """Run (or resume) the ingest job; returns the summary dict. Bad usage (a source that yields no
    input, negative workers, an output folder that cannot be written) is an IngestError before
    anything is written; a full disk stops the job with DiskFull, the committed units kept.
    `out_dir` and the sources may be object-store URLs (datasets/storage.py; `storage_options` for their
    driver, `break_lock` to take over the stale lock of a killed run there)."""
    if not sources:
        raise IngestError("give at least one --source")
    if unit_size < 1 or timeout <= 0 or sample_stride < 1 or (num_frames is not None and num_frames < 1):
        raise IngestError("unit_size, decode timeout, sample_stride and num_frames must be positive")
    check_workers(workers, IngestError)
    started = time.perf_counter()
    if workers == 0 and scheduler is None:
        _decoder(timeout).start()  # its start-up overlaps discovery and planning
    out_dir = normalized(out_dir)
    inputs = discover(sources, storage_options)
    settings = _job_settings(sources, num_frames, sample_stride, verify, unit_size)
    with Job(out_dir, "ingest.json", settings, "units", IngestError, storage_options=storage_options,
             unit_paths=lambda record: [f"units/{record['unit_id']}.parquet"], break_lock=break_lock,
             keep_units_local=True) as job:
        work_dir = job.work_dir  # out_dir itself, or the local scratch of an object-store job
        records = job.records()
        attempt = 1 + max((record["attempt"] for record in records), default=0)
        pending, skipped = job.plan(inputs, unit_size, _member_key, "u", "inputs")
        logger.info("%d inputs in %d units: %d already done", len(inputs), skipped + len(pending), skipped)
        if retry_failed:
            job.localize(records)
            failed_inputs = [_as_input(row) for row in latest_rows(work_dir, records)
                             if row["category"] is not None and row["category"] not in DISCOVERY_FAILURES]
            retries, _ = plan_units(failed_inputs, unit_size, _member_key, f"r{attempt}", "inputs")
            logger.info("retrying %d failed input(s) in %d unit(s)", len(failed_inputs), len(retries))
            pending += retries
        common = {"out_dir": work_dir, "storage_options": storage_options, "verify": verify, "timeout": timeout, "num_frames": num_frames,
                  "sample_stride": sample_stride, "attempt": attempt,
                  "min_frames": num_frames * sample_stride if num_frames else 0}
        specs = [{**unit, **common} for unit in pending]
        errors = job.run(ingest_unit, specs, lambda spec: len(spec["inputs"]), "ingest", "video", workers,
                         scheduler, progress)
        job.localize(job.records())
        ok, failed = job.publish(lambda: _assemble(work_dir, latest_rows(work_dir, job.records())),
                                 "writing manifest.parquet and failures.parquet",
                                 outputs=("failures.parquet", "manifest.parquet"))
    seconds = time.perf_counter() - started
    by_category = {}
    for row in failed:
        by_category[row["category"]] = by_category.get(row["category"], 0) + 1
    return {"out_dir": out_dir, "inputs": len(ok) + len(failed), "ok": len(ok), "failed": len(failed),
            "failed_by_category": by_category, "frames": sum(row["num_frames"] for row in ok),
            "units_run": len(specs), "units_skipped": skipped, "unit_errors": errors,
            "seconds": round(seconds, 2),
            "videos_per_s": round(sum(len(s["inputs"]) for s in specs) / seconds, 2) if specs else 0.0}


def _as_input(row):
    return {"video_id": row["video_id"], "path": row["path"], "kind": row["kind"], "label": row["label"],
            "caption": row["caption"]}
