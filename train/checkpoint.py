"""Run checkpoints: everything a bit-identical resume needs, committed atomically.

    OUTPUT/ckpt/step-00000120/
        train_state.ckpt   model, optimizer (Adam moments, beta powers, step), EMA, loss scale
        ema.ckpt           the EMA weights as a plain Latte state dict (model.ckpt without EMA),
                           for `latte sample` and `mindspore.load_checkpoint(..., strict_load=True)`
        state.json         step, loader state, resolved config

A checkpoint is written in ckpt/.staging-*/ and made visible by renaming the folder, so a folder named
step-* is always complete; the oldest are deleted beyond `keep`.
"""
import json
import os
import re
import shutil

import mindspore as ms

from latte_core.errors import UserError

STAGING_PREFIX = ".staging-"
_NAME = re.compile(r"^step-(\d{8})$")


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
    staging = os.path.join(ckpt_root, f"{STAGING_PREFIX}{os.getpid()}-step-{step:08d}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        ms.save_checkpoint(_entries(cells), os.path.join(staging, "train_state.ckpt"))
        ms.save_checkpoint([{"name": name, "data": value} for name, value in sampling_weights.items()],
                           os.path.join(staging, "ema.ckpt"))
        with open(os.path.join(staging, "state.json"), "w") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
        for name in os.listdir(staging):
            with open(os.path.join(staging, name), "rb") as handle:
                os.fsync(handle.fileno())
        if os.path.exists(final):  # the same step saved by a run that was stopped before it went on
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in checkpoint_dirs(ckpt_root)[:-keep]:
        shutil.rmtree(old)
    return final


def read_state(folder):
    """state.json of a checkpoint folder."""
    path = os.path.join(folder, "state.json")
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise ResumeError(f"{path}: unreadable ({err})") from None


def remove_staging(ckpt_root):
    if os.path.isdir(ckpt_root):
        for entry in os.scandir(ckpt_root):
            if entry.name.startswith(STAGING_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)


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
