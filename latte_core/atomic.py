"""File utilities: publish a file or a folder in one rename, and the sha256 of a file.

Everything the toolkit publishes (job units, cache shards, manifests and indexes, job settings, run
checkpoints, saved weights) is written under a staging name next to its final name (same file system,
so the rename is atomic), flushed to disk, then renamed onto the final name: a reader, or a run after a
kill, sees the old content or the new one, never a part. A staging name starts with STAGING_PREFIX, so
`remove_staging` can clear what a killed writer left behind.

    with staged(path) as tmp:            # a file: write tmp; on success tmp replaces path
        ...
    with staged(folder, folder=True) as tmp:   # a folder: fill tmp; it replaces folder
        ...

On any exception inside the block the staging path is removed and nothing becomes visible.
"""
import errno
import hashlib
import json
import math
import os
import shutil
import uuid

from .errors import UserError

STAGING_PREFIX = ".staging-"


def sha256_of(path, chunk=1 << 20):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def staging_path(final):
    """A unique staging name beside `final`, ending in its name (so suffix-minded writers keep it)."""
    folder, name = os.path.split(os.path.abspath(final))
    return os.path.join(folder, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(path):
    """Flush a file, or a folder's files and the folder itself, to the disk."""
    if os.path.isdir(path):
        for entry in os.scandir(path):
            if entry.is_file(follow_symlinks=False):
                _fsync(entry.path)
    _fsync(path)


def _remove(path, ignore_errors=False):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
    elif os.path.lexists(path):
        os.remove(path)


class staged:
    """A staging path for `final` (an empty new folder when `folder`), published by `commit` or dropped
    by `discard`; as a context manager, `with staged(final) as tmp:` commits when the block ends without
    an exception and discards on one. `commit` flushes the staging path, renames it onto `final`
    (replacing a file or folder of that name) and flushes the parent folder; if that fails the staging
    path is removed and `final` is as it was."""

    def __init__(self, final, folder=False):
        self.final, self.folder = os.fspath(final), folder
        self.path = staging_path(self.final)

    def __enter__(self):
        if self.folder:
            os.makedirs(self.path)
        return self.path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False

    def commit(self):
        try:
            fsync_tree(self.path)
            if self.folder and os.path.isdir(self.final):  # left by a writer killed after its rename
                shutil.rmtree(self.final)
            os.replace(self.path, self.final)
        except BaseException:
            self.discard()
            raise
        _fsync(os.path.dirname(os.path.abspath(self.final)))

    def discard(self):
        _remove(self.path, ignore_errors=True)


def write_atomically(path, write):
    """Call write(tmp_path), then publish tmp_path as `path` (see `staged`)."""
    with staged(path) as tmp:
        write(tmp)


def write_json_atomically(path, data):
    """Publish `data` as strict JSON: a NaN or infinity in it is a bug (ValueError), never written."""
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True, allow_nan=False)
    write_atomically(path, write)


def finite_or_none(data):
    """`data` with every non-finite float (a measure that overflowed, a diverged loss) replaced by None, so
    that it dumps as strict JSON (null): for figures that may legitimately be non-finite."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(value) for value in data]
    return data


def strict_json_line(data):
    """`data` as one line of strict JSON, non-finite floats as null (see finite_or_none)."""
    return json.dumps(finite_or_none(data), allow_nan=False)


def write_figures_json(data, path):
    """Write a report of figures to `path` as indented strict JSON, non-finite floats as null (see
    finite_or_none); returns the path."""
    with open(path, "w") as handle:
        json.dump(finite_or_none(data), handle, indent=1, allow_nan=False)
    return path


def make_output_dir(path, what="output folder", create=True, error=UserError):
    """Create the folder `path` (and its parents; an existing folder is fine) before a command's work
    starts; any OSError (a file in the way, a read-only mount, no permission) is one UserError naming the
    path and the reason (`error`, a UserError by default). create=False only checks that it could be (its
    nearest existing ancestor a writable folder), writing nothing, for commands that refuse later inputs
    with nothing written.
    Returns the absolute path."""
    path = os.path.abspath(path)
    existing = path
    try:
        if create:
            os.makedirs(path, exist_ok=True)
        else:
            while not os.path.lexists(existing):
                existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, "Not a directory", existing)
        if os.statvfs(existing).f_flag & os.ST_RDONLY:  # root's os.access says yes on a read-only mount
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), existing)
    except OSError as err:
        reason = err.strerror or str(err)
        where = f" ({err.filename} is not a writable folder)" if err.filename and err.filename != path else ""
        raise error(f"{what} {path}: cannot write there ({reason}){where}") from None
    return path


def remove_staging(folder):
    """Delete the staging files and folders a killed writer left in `folder`; returns how many."""
    if not os.path.isdir(folder):
        return 0
    stale = [entry.path for entry in os.scandir(folder) if entry.name.startswith(STAGING_PREFIX)]
    for path in stale:
        _remove(path)
    return len(stale)
