"""Paths that may be object-store URLs (s3://bucket/prefix, or any scheme fsspec has a driver for).

A plain path or a file:// URL is a local folder and keeps the rename-based layout (latte_core.atomic);
anything else is opened through fsspec as a `Store`. Credentials and endpoints come from where the
driver looks (for s3://: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/config
and credentials) or from a config's `storage_options` mapping (fsspec's keyword arguments, e.g. `key`,
`secret`, `endpoint_url`, `client_kwargs`). Those options are never logged, never part of a
fingerprint, and `redacted` in every JSON the toolkit writes.

Every call into the store that fails is one StorageError (a UserError) naming the URL and the store's
reason (a missing bucket, refused credentials, an unreachable endpoint, a read-only bucket), never the
credentials.

An object store has no rename. Objects are published under their final keys (one PUT each is atomic)
and a unit is "done" when its record object exists (pipelines/jobs.py). Every object this module
writes on an S3 store carries its sha256 in its metadata (`x-amz-meta-sha256`, written by the same PUT),
so a resume checks size and hash of a unit's objects with one listing and a HEAD each.
"""
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid

from latte_core.errors import UserError, first_line

logger = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
REDACTED = "<redacted>"
# an object store's lock: one whose heartbeat is silent for LOCK_STALE_S ($LATTE_LOCK_STALE_S) is stale (its run
# was killed) and `--break-lock` may take it over; a live run rewrites it six times as often
LOCK_STALE_S = 60.0


def lock_stale_seconds():
    try:
        return max(0.5, float(os.environ.get("LATTE_LOCK_STALE_S", LOCK_STALE_S)))
    except ValueError:
        raise UserError(f"LATTE_LOCK_STALE_S must be a number of seconds, got "
                        f"{os.environ['LATTE_LOCK_STALE_S'][:40]!r}") from None


class StorageError(UserError):
    """An object store refused or could not be reached; the message names the URL, never credentials."""


class ObjectMissing(StorageError):
    """The object (or its bucket) does not exist."""


def is_url(path):
    """Whether `path` names an object store (a scheme other than file://)."""
    match = _SCHEME.match(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None
    return bool(match) and match.group(1).lower() != "file"


def local_path(path):
    """A local path from a plain path or a file:// URL (absolute)."""
    path = os.fspath(path)
    if path.lower().startswith("file://"):
        path = path[len("file://"):]
    return os.path.abspath(path)


def normalized(path):
    """A URL without its trailing slash, or an absolute local path: how a job records a path."""
    return os.fspath(path).rstrip("/") if is_url(path) else local_path(path)


def join(base, *names):
    """`base`/`names` for a URL or a local path."""
    if is_url(base):
        return "/".join([os.fspath(base).rstrip("/")] + [n.strip("/") for n in names if n])
    return os.path.join(base, *names)


def redacted(options):
    """`storage_options` with every value replaced (the keys stay, to show what was given)."""
    if not options:
        return options
    return {key: REDACTED for key in options}


def redact_config(config):
    """A copy of a config (a dict) whose `storage_options` are redacted, for any JSON written."""
    if isinstance(config, dict) and config.get("storage_options"):
        return {**config, "storage_options": redacted(config["storage_options"])}
    return config


def _reason(err):
    """The first line of an error, without anything that looks like a credential."""
    text = first_line(err, limit=None)
    text = re.sub(r"(?i)(secret|key|token|signature)=[^&\s]+", r"\1=" + REDACTED, text)
    return text[:300]


def scratch_root():
    """The local folder for work in progress of object-store jobs and loaders ($LATTE_SCRATCH, else
    ~/.cache/latte)."""
    return os.environ.get("LATTE_SCRATCH") or os.path.join(os.path.expanduser("~"), ".cache", "latte")


def scratch_for(url, kind):
    """A local folder of its own for `url` (a hash of it) under scratch_root()/kind."""
    return os.path.join(scratch_root(), kind, hashlib.sha1(normalized(url).encode()).hexdigest()[:16])


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _quiet_lost_connections(loop, context):
    """The exception handler of fsspec's IO loop. When a connection is cut (an outage), aiohttp's writer of a
    request's body fails in a task nobody awaits, and asyncio logs its traceback ("Task exception was never
    retrieved"); the request fails too and becomes the job's one Error line, so that traceback is only noise.
    Everything else goes to asyncio's default handler."""
    import aiohttp
    if isinstance(context.get("exception"), aiohttp.ClientConnectionError):
        return
    loop.default_exception_handler(context)


class Store:
    """An object-store prefix (`url`) through its fsspec driver; keys are relative to the prefix."""

    def __init__(self, url, storage_options=None, what="URL"):
        self.url = normalized(url)
        self.what = what
        scheme = _SCHEME.match(self.url).group(1).lower()
        try:
            import fsspec.asyn  # binds fsspec too; asyn: its IO loop (below)
            fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError) as err:
            raise StorageError(f"{what} {self.url}: no fsspec driver for the scheme {scheme}:// ({_reason(err)}); "
                               f"s3:// (s3fs) and the schemes fsspec ships are supported") from None
        try:
            self.fs = fsspec.filesystem(scheme, **dict(storage_options or {}))
        except Exception as err:  # a wrong option name or type
            raise StorageError(f"{what} {self.url}: storage_options refused by the {scheme}:// driver "
                               f"({type(err).__name__}: {_reason(err)})") from None
        self.root = self.fs._strip_protocol(self.url).rstrip("/")
        self.is_s3 = scheme in ("s3", "s3a")
        if self.is_s3:
            fsspec.asyn.get_loop().set_exception_handler(_quiet_lost_connections)

    # ---------------------------------------------------------------------------------------- helpers
    def path(self, key=""):
        return f"{self.root}/{key}" if key else self.root

    def url_of(self, key=""):
        return f"{self.url}/{key}" if key else self.url

    def key_of(self, path):
        """The key of a driver path under this prefix."""
        path = self.fs._strip_protocol(path)
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    def error(self, err, key, doing):
        kind = {FileNotFoundError: "not found (a missing bucket or object)",
                PermissionError: "access denied (check the credentials and the bucket's permissions)"}
        reason = next((text for cls, text in kind.items() if isinstance(err, cls)), None)
        detail = _reason(err)
        cls = ObjectMissing if isinstance(err, FileNotFoundError) else StorageError
        return cls(f"{self.what} {self.url_of(key)}: {reason + ': ' if reason else ''}{detail} while {doing}")

    def _call(self, doing, key, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except StorageError:
            raise
        except Exception as err:
            raise self.error(err, key, doing) from None

    # ---------------------------------------------------------------------------------------- reading
    def check(self, doing="opening it"):
        """Reach the store (credentials, endpoint, bucket) once; StorageError if it cannot be."""
        self._call(doing, "", self._list_prefix)

    def _list_prefix(self):
        try:
            return self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            if "/" not in self.root:  # the bucket itself
                raise
            bucket = self.root.split("/")[0]
            self.fs.ls(bucket, detail=False, refresh=True)  # a missing bucket raises here, an empty prefix not
            return []

    def exists(self, key):
        self.fs.invalidate_cache(self.path(key))
        try:
            return self.fs.exists(self.path(key))
        except FileNotFoundError:
            return False
        except Exception as err:
            raise self.error(err, key, "looking for it") from None

    def listing(self, prefix=""):
        """{key: size} of every object under `prefix` (all of the store's prefix for "")."""
        base = self.path(prefix)
        try:
            self.fs.invalidate_cache()
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as err:
            raise self.error(err, prefix, "listing it") from None
        return {self.key_of(path): info.get("size", 0) for path, info in found.items() if info.get("type") != "directory"}

    def cat(self, key, start=None, end=None):
        return self._call("reading it", key, self.fs.cat_file, self.path(key), start=start, end=end)

    def size(self, key):
        return self._call("reading its size", key, self.fs.size, self.path(key))

    def stored_sha256(self, key):
        """The sha256 an object carries in its metadata (None where the store keeps none)."""
        if not self.is_s3:
            return None
        self.fs.invalidate_cache(self.path(key))
        meta = self._call("reading its metadata", key, self.fs.metadata, self.path(key), refresh=True)
        return meta.get("sha256")

    def get_file(self, key, local):
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        self._call("downloading it", key, self.fs.get_file, self.path(key), local)

    def read_json(self, key):
        data = self.cat(key)
        try:
            return json.loads(data)
        except ValueError:
            raise StorageError(f"{self.url_of(key)}: not valid JSON; the object was modified or damaged") from None

    # ---------------------------------------------------------------------------------------- writing
    def _extra(self, digest):
        return {"Metadata": {"sha256": digest}} if self.is_s3 else {}

    def put_bytes(self, key, data, create=False):
        """PUT `data` under `key` (one request, atomic per object); `create`: only if no object of that key
        exists (If-None-Match: *), else FileExistsError. Returns (size, sha256)."""
        digest = sha256_bytes(data)
        kwargs = self._extra(digest)
        if create:
            kwargs["mode"] = "create"
        try:
            self.fs.pipe_file(self.path(key), data, **kwargs)
        except FileExistsError:
            if create:
                raise
            raise self.error(FileExistsError("refused"), key, "writing it") from None
        except Exception as err:
            raise self.error(err, key, "writing it") from None
        self.fs.invalidate_cache(self.path(key))
        return len(data), digest

    def put_file(self, local, key, digest=None):
        """Upload a local file under `key`; returns (size, sha256)."""
        digest = digest or _file_sha256(local)
        self._call("uploading it", key, self.fs.put_file, local, self.path(key), **self._extra(digest))
        self.fs.invalidate_cache(self.path(key))
        return os.path.getsize(local), digest

    def put_files(self, pairs, batch=32):
        """Upload [(local file, key)], `batch` at a time concurrently where the driver is asynchronous (s3fs);
        returns {key: (size, sha256)}."""
        done = {key: (os.path.getsize(local), _file_sha256(local)) for local, key in pairs}
        if not getattr(self.fs, "async_impl", False):
            for local, key in pairs:
                self.put_file(local, key, done[key][1])
            return done
        import asyncio

        from fsspec.asyn import sync

        async def upload(part):
            await asyncio.gather(*[self.fs._put_file(local, self.path(key), **self._extra(done[key][1]))
                                   for local, key in part])

        for start in range(0, len(pairs), batch):
            part = pairs[start:start + batch]
            self._call("uploading it", part[0][1], sync, self.fs.loop, upload, part)
        self.fs.invalidate_cache()
        return done

    def put_json(self, key, data, create=False):
        text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False).encode()
        return self.put_bytes(key, text, create=create)

    def remove(self, keys):
        keys = list(keys)
        if keys:
            self._call("deleting it", keys[0], self.fs.rm, [self.path(key) for key in keys])
            self.fs.invalidate_cache()

    def abort_uploads(self):
        """Abort the multipart uploads a killed run left under this prefix (S3 only); returns how many."""
        if not self.is_s3:
            return 0
        bucket, _, prefix = self.root.partition("/")
        try:
            uploads = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        except Exception as err:
            raise self.error(err, "", "listing its unfinished multipart uploads") from None
        found = uploads.get("Uploads", []) or []
        for upload in found:
            self._call("aborting an unfinished upload", upload["Key"], self.fs.abort_mpu, bucket, upload["Key"],
                       upload["UploadId"])
        return len(found)


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_store(url, storage_options=None, what="URL"):
    """A checked Store: the bucket reached with the credentials given (StorageError otherwise)."""
    store = Store(url, storage_options, what)
    store.check()
    return store


# ---------------------------------------------------------------------------------------- the job lock
class StoreLock:
    """A job's lock on an object-store prefix: the object `.lock` created by a conditional PUT
    (If-None-Match: *) holding the owner and a heartbeat a thread rewrites every sixth of the stale time.

    Some S3-compatible servers accept If-None-Match and ignore it: before locking, two conditional PUTs of
    one probe key must see the second refused (412), else the store cannot lock and the job stops. A lock
    whose heartbeat is older than lock_stale_seconds() (its run was killed) is taken over with `break_lock`;
    a live one refuses the run."""

    KEY = ".lock"

    def __init__(self, store, break_lock=False, error=StorageError):
        self.store, self.break_lock, self.error = store, break_lock, error
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = None
        self.lost = None
        self.stale = lock_stale_seconds()

    def _probe(self):
        key = f".lock-probe-{uuid.uuid4().hex[:12]}"
        self.store.put_bytes(key, b"probe", create=True)
        try:
            try:
                self.store.put_bytes(key, b"probe", create=True)
            except FileExistsError:
                return
            raise self.error(f"{self.store.url}: the store accepted a conditional write (If-None-Match: *) over an "
                             f"existing object instead of refusing it (412): it cannot lock a job against a second "
                             f"run; use a store that honours conditional writes, or a local folder")
        finally:
            self.store.remove([key])

    def _body(self):
        return {"owner": self.owner, "heartbeat": time.time()}

    def __enter__(self):
        self._probe()
        for _ in range(2):
            try:
                self.store.put_json(self.KEY, self._body(), create=True)
                break
            except FileExistsError:
                try:
                    held = self.store.read_json(self.KEY)
                    age = time.time() - float(held.get("heartbeat", 0))
                except StorageError:
                    held, age = {"owner": "unknown"}, self.stale + 1  # deleted meanwhile, or unreadable
                if age <= self.stale:
                    raise self.error(f"{self.store.url} is being written by another running job ({held.get('owner')}, "
                                     f"heartbeat {age:.0f} s ago); wait for it to finish") from None
                if not self.break_lock:
                    raise self.error(f"{self.store.url} holds the lock of a job that stopped ({held.get('owner')}, no "
                                     f"heartbeat for {age:.0f} s, stale after {self.stale:g} s): re-run with "
                                     f"--break-lock if no job is writing there") from None
                logger.warning("%s: breaking the stale lock of %s (no heartbeat for %.0f s)", self.store.url,
                               held.get("owner"), age)
                self.store.remove([self.KEY])
        else:
            raise self.error(f"{self.store.url}: another job took the lock while this one broke the stale lock")
        self._thread = threading.Thread(target=self._beat, name="latte-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.stale / 6):
            try:
                held = self.store.read_json(self.KEY)
                if held.get("owner") != self.owner:
                    self.lost = f"the lock is now held by {held.get('owner')}"
                    return
                self.store.put_json(self.KEY, self._body())
            except Exception as err:  # an outage: the job's own requests report it
                logger.debug("lock heartbeat failed: %s", _reason(err))

    def check(self):
        if self.lost:
            raise self.error(f"{self.store.url}: this job lost its lock ({self.lost}); stopping")

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None:
            try:
                self.store.remove([self.KEY])
            except StorageError as err:
                logger.warning("could not remove the lock: %s", err)


# ---------------------------------------------------------------------------------------- the ledger
LEDGER_PREFIX = "ledger/"


def read_store_ledger(store):
    """The unit records of an object-store job, in commit order (their keys' sequence numbers)."""
    keys = sorted(key for key in store.listing(LEDGER_PREFIX) if key.endswith(".json"))
    if not keys:
        return []
    paths = [store.path(key) for key in keys]
    try:
        data = store.fs.cat(paths)
    except Exception as err:
        raise store.error(err, LEDGER_PREFIX, "reading the ledger") from None
    records = []
    for key, path in zip(keys, paths):
        try:
            record = json.loads(data[path])
        except ValueError:
            raise StorageError(f"{store.url_of(key)}: not a unit record (not valid JSON); the ledger was modified: "
                               f"delete that object to redo its unit") from None
        record["_key"] = key
        records.append(record)
    return records


def fetch_verified(store, key, local, size=None, sha256=None):
    """Download `key` to `local` (by a staging name and one rename), checked against its recorded size
    and sha256; StorageError naming the URL on a mismatch."""
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = os.path.join(os.path.dirname(local), f".staging-{uuid.uuid4().hex[:12]}-{os.path.basename(local)}")
    try:
        store.get_file(key, tmp)
        if size is not None and os.path.getsize(tmp) != size:
            raise StorageError(f"{store.url_of(key)}: {os.path.getsize(tmp)} bytes, its ledger record says {size}: "
                               f"the object was modified after it was published")
        if sha256 is not None and _file_sha256(tmp) != sha256:
            raise StorageError(f"{store.url_of(key)}: its sha256 differs from its ledger record's: the object was "
                               f"modified after it was published")
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return local


def clear_folder(folder):
    """Empty a local scratch folder (made if missing)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)


@contextlib.contextmanager
def local_copy(path, kind="video", storage_options=None):
    """A local path for a video (`kind` "video") or a frame folder ("frames"): `path` itself when local;
    for a URL, the object (or the folder's objects) fetched into a scratch folder of its own, deleted
    when the block ends, so decoding from a store holds one input at a time on the local disk."""
    if not is_url(path):
        yield path
        return
    parent, name = normalized(path).rsplit("/", 1)
    store = Store(parent, storage_options, "video")
    folder = os.path.join(scratch_root(), "decode", f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        local = os.path.join(folder, name)
        if kind == "frames":
            os.makedirs(local)
            for key in sorted(store.listing(name)):
                if key.count("/") == 1:  # the folder's own images, as locally
                    store.get_file(key, os.path.join(folder, key))
        else:
            store.get_file(name, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def object_size(path, kind="video", storage_options=None):
    """Bytes of a video object, or of a frame folder's objects."""
    parent, name = normalized(path).rsplit("/", 1)
    store = Store(parent, storage_options, "video")
    if kind == "frames":
        return sum(size for key, size in store.listing(name).items() if key.count("/") == 1)
    return store.size(name)


JOB_TABLES = ("manifest.parquet", "curate.json", "clips.parquet", "ingest.json")


def local_job_tables(url, storage_options=None, what="--manifest"):
    """A local copy of a job folder's published tables (an ingest folder's manifest.parquet, a curate
    folder's curate.json and clips.parquet), or of one .parquet object, for the stages that read them
    whole; the local path to give in place of `url`."""
    url = normalized(url)
    if url.lower().endswith(".parquet"):
        parent, name = url.rsplit("/", 1)
        store = open_store(parent, storage_options, what)
        local = os.path.join(scratch_for(url, "tables"), name)
        if not store.exists(name):
            raise StorageError(f"{what} {url}: no such object")
        fetch_verified(store, name, local)
        return local
    store = open_store(url, storage_options, what)
    folder = scratch_for(url, "tables")
    clear_folder(folder)
    found = False
    for name in JOB_TABLES:
        if store.exists(name):
            fetch_verified(store, name, os.path.join(folder, name))
            found = True
    if not found:
        raise StorageError(f"{what} {url}: no manifest.parquet or clips.parquet there (run `latte ingest` or "
                           f"`latte curate` first)")
    return folder


def cache_tables(url, storage_options, folder, what="cache"):
    """Fetch a cache's tables (cache.json, index.parquet, ...) from an object store into `folder`, with
    its ledger as ledger.jsonl (fetched anew each time); returns (the Store, the ledger records)."""
    store = open_store(url, storage_options, what)
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    top = [key for key in store.listing() if "/" not in key and not key.startswith(".lock")]
    if "cache.json" not in top:
        raise StorageError(f"{what} {store.url}: no cache.json there (not a cache, or its `latte cache` has not "
                           f"started)")
    for key in top:
        fetch_verified(store, key, os.path.join(folder, key))
    records = [{k: v for k, v in record.items() if k != "_key"} for record in read_store_ledger(store)]
    lines = "".join(json.dumps(record, sort_keys=True, allow_nan=False) + "\n" for record in records)
    with open(os.path.join(folder, ".staging-ledger.jsonl"), "w") as handle:
        handle.write(lines)
    os.replace(os.path.join(folder, ".staging-ledger.jsonl"), os.path.join(folder, "ledger.jsonl"))
    return store, records


def local_cache(url, storage_options=None, what="cache"):
    """A whole local copy of a cache in an object store (for `latte report` and sampling's checks): its
    tables and ledger (cache_tables), and every shard its ledger names fetched once into
    scratch_root()/caches/<hash of the URL>/shards/, each object checked against the size and sha256 its
    record holds before the shard folder appears by one rename (a shard already there was checked when
    it came). A shard the ledger no longer names is deleted. Returns the local folder."""
    folder = scratch_for(normalized(url), "caches")
    store, records = cache_tables(url, storage_options, folder, what)
    wanted = set()
    for record in records:
        wanted.add(record["unit_id"])
        fetch_shard(store, record, os.path.join(folder, "shards", record["unit_id"]))
    for name in os.listdir(os.path.join(folder, "shards")):
        if name not in wanted:
            shutil.rmtree(os.path.join(folder, "shards", name), ignore_errors=True)
    return folder


def fetch_shard(store, record, local):
    """Fetch one shard's objects (as its ledger record names them, each checked) into `local` by one
    rename; nothing to do when `local` is there."""
    if os.path.isdir(local):
        return local
    tmp = os.path.join(os.path.dirname(local), f".staging-{uuid.uuid4().hex[:12]}-{os.path.basename(local)}")
    try:
        for key, meta in sorted(record.get("objects", {}).items()):
            fetch_verified(store, key, os.path.join(tmp, key.rsplit("/", 1)[1]), meta["size"], meta["sha256"])
        os.makedirs(tmp, exist_ok=True)
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


# ---------------------------------------------------------------------------------------- the streaming loader
def stream_cache(url, storage_options, rank, cache_limit_gb, prefetch_shards, window):
    """(local folder, ShardStream) for a loader of a cache in an object store: the tables and ledger
    fetched into scratch_root()/stream/<hash of the URL>-rank<rank>/, the shards fetched as the plan needs
    them (ShardStream)."""
    folder = scratch_for(normalized(url), "stream") + f"-rank{rank}"
    store, records = cache_tables(url, storage_options, folder, "data_folder")
    limit = None if cache_limit_gb is None else int(cache_limit_gb * (1 << 30))
    return folder, ShardStream(store, records, folder, limit, prefetch_shards, window)


class ShardStream:
    """The shards of a cache in an object store, in a local folder holding at most `limit_bytes` of them
    (None: no limit) per rank.

    `schedule(shards)` takes the shard of each sample this rank reads in the epoch, in plan order; a
    thread then fetches the shards in the order of their first use, at most `window + prefetch` shards
    ahead of the first use the loader has reached (the clips of `window` shards are shuffled together,
    so those are read at once), each checked against its ledger record (sizes and sha256 of its objects)
    as it arrives and published by one rename. Room is made by deleting shards this rank reads no more
    in the epoch (kept otherwise: a warm cache costs nothing). `acquire(shard)` waits for a shard before a
    sample reads it, `release(shard)` counts the read done. A limit below (window + prefetch) x the
    largest shard could stall the plan and is refused when the stream is made."""

    def __init__(self, store, records, folder, limit_bytes, prefetch, window):
        self.store, self.folder = store, folder
        self.records = {record["unit_id"]: record for record in records}
        self.limit, self.ahead = limit_bytes, window + prefetch
        largest = max((record["bytes"] for record in records), default=0)
        if limit_bytes is not None and limit_bytes < self.ahead * largest:
            raise StorageError(
                f"data_folder {store.url}: cache_limit_gb {limit_bytes / (1 << 30):.4g} holds less than shuffle_window "
                f"{window} + prefetch_shards {prefetch} shards of up to {largest / (1 << 20):.3f} MiB "
                f"({self.ahead * largest / (1 << 30):.4g} GB): raise cache_limit_gb or lower those")
        shards = os.path.join(folder, "shards")
        self.present = {name: self.records[name]["bytes"] for name in os.listdir(shards)
                        if name in self.records and not name.startswith(".")}  # checked when they came
        for name in os.listdir(shards):
            if name not in self.present:
                shutil.rmtree(os.path.join(shards, name), ignore_errors=True)
        self.cond = threading.Condition()
        self.uses, self.order, self.reached, self.error = {}, [], 0, None
        self.fetched, self.peak = 0, 0  # shards fetched, and the most bytes held (for the tests and benchmarks)
        self._stop = threading.Event()
        self._thread = None

    def schedule(self, shards):
        self.stop()
        with self.cond:
            self.uses, self.order = {}, []
            for shard in shards:
                if shard not in self.uses:
                    self.order.append(shard)
                    self.uses[shard] = 0
                self.uses[shard] += 1
            self.first = {shard: i for i, shard in enumerate(self.order)}
            self.reached, self.error = 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fetch_all, args=(self._stop,), name="latte-shard-prefetch",
                                        daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            with self.cond:
                self.cond.notify_all()
            self._thread.join()
            self._thread = None

    def _room(self, size):
        """Delete shards this epoch reads no more until `size` more bytes fit; whether they do."""
        if self.limit is None:
            return True
        held = sum(self.present.values())
        for shard in [s for s in self.present if self.uses.get(s, 0) == 0]:
            if held + size <= self.limit:
                break
            shutil.rmtree(os.path.join(self.folder, "shards", shard), ignore_errors=True)
            held -= self.present.pop(shard)
        return held + size <= self.limit

    def _fetch_all(self, stop):
        for index, shard in enumerate(self.order):
            with self.cond:
                while not stop.is_set() and shard not in self.present and (
                        index >= self.reached + self.ahead or not self._room(self.records[shard]["bytes"])):
                    self.cond.wait(0.5)
                if stop.is_set():
                    return
                if shard in self.present:
                    continue
            try:
                fetch_shard(self.store, self.records[shard], os.path.join(self.folder, "shards", shard))
            except Exception as err:  # kept for the loader's thread that waits for this shard
                with self.cond:
                    self.error = err if isinstance(err, StorageError) else self.store.error(err, f"shards/{shard}",
                                                                                           "fetching it")
                    self.cond.notify_all()
                return
            with self.cond:
                self.present[shard] = self.records[shard]["bytes"]
                self.fetched += 1
                self.peak = max(self.peak, sum(self.present.values()))
                self.cond.notify_all()

    def acquire(self, shard):
        with self.cond:
            if shard in self.first:
                self.reached = max(self.reached, self.first[shard] + 1)
                self.cond.notify_all()
            while shard not in self.present:
                if self.error is not None:
                    raise self.error
                if shard not in self.first:  # not in this epoch's schedule: fetched here
                    break
                self.cond.wait(0.5)
        if shard not in self.present:
            fetch_shard(self.store, self.records[shard], os.path.join(self.folder, "shards", shard))
            with self.cond:
                self.present[shard] = self.records[shard]["bytes"]

    def release(self, shard):
        with self.cond:
            if self.uses.get(shard, 0) > 0:
                self.uses[shard] -= 1
            self.cond.notify_all()
