"""Run checkpoints: everything a bit-identical resume needs, committed atomically.

    OUTPUT/ckpt/step-00000120/
        train_state.ckpt   model, optimizer (Adam moments, beta powers, step), EMA, loss scale
        ema.ckpt           the EMA weights as a plain Latte state dict (model.ckpt without EMA),
                           for `latte sample` and `mindspore.load_checkpoint(..., strict_load=True)`
        state.json         step, loader state, resolved config
        checksums.json     sha256 and size of each file above, written last (atomically)

A checkpoint is written in ckpt/.staging-*/ and made visible by renaming the folder, so a folder named
step-* is always complete; the oldest are deleted beyond `keep`. On resume, `checkpoint_problem`
re-hashes the files: a damaged one (a bad disk, a copy cut short, bytes overwritten) is never loaded.
A folder without checksums.json was written before checksums existed: it is loaded, with a warning
that it cannot be verified.
"""
import json
import logging
import os
import re
import shutil

import mindspore as ms

from latte_core.atomic import remove_staging  # noqa: F401  (the training loop clears ckpt/ with it)
from latte_core.atomic import sha256_of, staged, write_json_atomically
from latte_core.errors import UserError

DAMAGED_PREFIX = "damaged-"
CHECKSUMS = "checksums.json"
FILES = ("train_state.ckpt", "ema.ckpt", "state.json")
UNVERIFIED = "unverified"  # checkpoint_problem's answer for a folder written without checksums
_NAME = re.compile(r"^step-(\d{8})$")
logger = logging.getLogger(__name__)


class ResumeError(UserError):
    pass


def checkpoint_dirs(ckpt_root):
    """Committed checkpoint folders, oldest first."""
    if not os.path.isdir(ckpt_root):
        return []
    found = [(int(m.group(1)), entry.path) for entry in os.scandir(ckpt_root)
             if entry.is_dir() and (m := _NAME.match(entry.name))]
    return [path for _, path in sorted(found)]


def _entries(cells):
    seen, entries = set(), []
    for cell in cells:
        for param in cell.get_parameters():
            if param.name not in seen:
                seen.add(param.name)
                entries.append({"name": param.name, "data": param})
    return entries


def save_checkpoint(ckpt_root, step, cells, sampling_weights, state, keep):
    """Write ckpt_root/step-<step>/ from `cells` (whose parameters make the training state) and
    `sampling_weights` ({name: Parameter}); delete all but the newest `keep`. Returns the folder."""
    os.makedirs(ckpt_root, exist_ok=True)
    final = os.path.join(ckpt_root, f"step-{step:08d}")
    with staged(final, folder=True) as staging:
        ms.save_checkpoint(_entries(cells), os.path.join(staging, "train_state.ckpt"))
        ms.save_checkpoint([{"name": name, "data": value} for name, value in sampling_weights.items()],
                           os.path.join(staging, "ema.ckpt"))
        with open(os.path.join(staging, "state.json"), "w") as handle:
            json.dump(state, handle, indent=1, sort_keys=True, allow_nan=False)
        _write_checksums(staging)
    for old in checkpoint_dirs(ckpt_root)[:-keep]:
        shutil.rmtree(old)
    return final


def _write_checksums(folder):
    """checksums.json for the files of `folder`, after them (the folder is published as a whole)."""
    files = {name: {"sha256": sha256_of(os.path.join(folder, name)), "bytes": os.path.getsize(os.path.join(folder, name))}
             for name in FILES}
    write_json_atomically(os.path.join(folder, CHECKSUMS), {"files": files})


def checkpoint_problem(folder):
    """None if every file of the checkpoint folder matches its checksums.json; UNVERIFIED if the folder
    has none (written before checksums existed); otherwise what is wrong, naming the file."""
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.exists(path):
        return UNVERIFIED
    try:
        with open(path) as handle:
            files = json.load(handle)["files"]
        listed = {name: (str(files[name]["sha256"]), int(files[name]["bytes"])) for name in FILES}
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path}: unreadable checksums ({type(err).__name__}: {err})"
    for name, (expected, size) in listed.items():
        file = os.path.join(folder, name)
        try:
            actual = os.path.getsize(file)
            if actual != size:
                return f"{file}: {actual} bytes, {CHECKSUMS} says {size} (damaged)"
            digest = sha256_of(file)
        except OSError as err:
            return f"{file}: unreadable ({err.strerror or err})"
        if digest != expected:
            return f"{file}: sha256 differs from {CHECKSUMS} (damaged)"
    return None


def select_checkpoint(folders, on_bad="previous"):
    """(checkpoint to resume from, damaged newer ones) among `folders` (oldest first): the newest whose
    files pass their checksums. A damaged one is logged; on_bad="stop" stops at the first, and so does
    running out of checkpoints (ResumeError naming the files). Nothing is written."""
    if on_bad not in ("previous", "stop"):
        raise ValueError(f"on_bad_checkpoint must be 'previous' or 'stop', got {on_bad!r}")
    damaged = []
    for folder in reversed(folders):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, damaged
        if problem == UNVERIFIED:
            logger.warning("%s has no %s (written by an older latte): its files cannot be verified; resuming "
                           "from it unchecked", folder, CHECKSUMS)
            return folder, damaged
        if on_bad == "stop":
            raise ResumeError(f"{problem}: the newest checkpoint is damaged and on_bad_checkpoint is stop; set "
                              f"on_bad_checkpoint: previous to resume from an older one, or remove {folder}")
        logger.warning("%s; not resuming from %s, trying the previous checkpoint", problem, folder)
        damaged.append((folder, problem))
    raise ResumeError(f"no checkpoint passes its checksums: {'; '.join(problem for _, problem in damaged)}; "
                      f"start a new run (another output_path)")


def set_aside(folder):
    """Rename a damaged checkpoint to damaged-step-N (kept for inspection, no longer a checkpoint), so
    the resumed run neither resumes from it again nor keeps it in place of a good one."""
    root, name = os.path.split(folder)
    target, n = os.path.join(root, DAMAGED_PREFIX + name), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(root, f"{DAMAGED_PREFIX}{name}-{n}")
    os.rename(folder, target)
    return target


def read_state(folder):
    """state.json of a checkpoint folder."""
    path = os.path.join(folder, "state.json")
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise ResumeError(f"{path}: unreadable ({err})") from None


def load_checkpoint(folder, cells):
    """Load a checkpoint folder into `cells` (every parameter must be in it); returns state.json."""
    path = os.path.join(folder, "train_state.ckpt")
    try:
        stored = ms.load_checkpoint(path)
        with open(os.path.join(folder, "state.json")) as handle:
            state = json.load(handle)
    except (OSError, ValueError, RuntimeError) as err:
        raise ResumeError(f"{folder}: unreadable checkpoint ({err})") from None
    entries = _entries(cells)
    missing = [entry["name"] for entry in entries if entry["name"] not in stored]
    if missing:
        raise ResumeError(f"{path} lacks {len(missing)} parameter(s) of this run, e.g. {', '.join(missing[:5])}: "
                          f"it was written by another configuration")
    for entry in entries:
        value = stored[entry["name"]]
        if tuple(value.shape) != tuple(entry["data"].shape):
            raise ResumeError(f"{path}: {entry['name']} has shape {tuple(value.shape)}, this run needs "
                              f"{tuple(entry['data'].shape)}")
        entry["data"].set_data(value.astype(entry["data"].dtype))
    return state
