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
import hashlib
import json
import os
import shutil
import uuid

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
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
    write_atomically(path, write)


def remove_staging(folder):
    """Delete the staging files and folders a killed writer left in `folder`; returns how many."""
    if not os.path.isdir(folder):
        return 0
    stale = [entry.path for entry in os.scandir(folder) if entry.name.startswith(STAGING_PREFIX)]
    for path in stale:
        _remove(path)
    return len(stale)
