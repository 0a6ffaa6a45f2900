"""The record of committed units of a job, its lock, and the errors of writing into a job folder.

A unit's output becomes visible by one rename of a finished file or folder (latte_core.atomic); only
then is one line appended to `ledger.jsonl` (one write, fsynced). "Done" means "in the ledger": a killed job leaves
at most a torn last line (ignored and cut off on the next open) and unledgered files (redone); a full
disk leaves no partial line (the append is undone) and raises DiskFull.
"""
import errno
import fcntl
import json
import os

from latte_toolkit.datasets.cache import read_ledger
from latte_core.errors import DiskFull, UserError


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
        line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
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
