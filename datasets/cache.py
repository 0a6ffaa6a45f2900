"""Reading a latent cache folder written by `latte cache`, whatever its format.

    CACHE/cache.json       the fingerprint: everything that changes the stored bytes
    CACHE/index.parquet    video_id -> shard, offset, frames, label, caption
    CACHE/shards/<shard>/  one folder per shard, in the format's layout (formats.py, *_format.py)
    CACHE/ledger.jsonl, CACHE/failures.parquet, CACHE/units/ (job bookkeeping)
"""
import hashlib
import json
import os

import numpy as np
import pyarrow.parquet as pq

from latte_core.errors import UserError

from .formats import get_format

POSTERIOR_FIELDS = ("mean", "std")
SAMPLE_FIELDS = ("sample",)


def fields_for(store):
    if store not in ("posterior", "sample"):
        raise ValueError(f"store must be 'posterior' or 'sample', got {store!r}")
    return POSTERIOR_FIELDS if store == "posterior" else SAMPLE_FIELDS


class CacheReader:
    """`ids` (video ids, sorted) and `read(video_id)` -> {"mean", "std"} or {"sample"} arrays of shape
    (frames, C, h, w), plus "label" and "caption" (and the video's arrays when the cache has them).
    `reader` is the format's Reader over every shard (random frame reads: `reader.read_frames`);
    `cache_bytes` bounds the decoded shard data it keeps in memory."""

    def __init__(self, folder, cache_bytes=256 << 20):
        self.folder = os.fspath(folder)
        info_path = os.path.join(self.folder, "cache.json")
        index_path = os.path.join(self.folder, "index.parquet")
        if not os.path.isfile(info_path) or not os.path.isfile(index_path):
            raise FileNotFoundError(f"{self.folder}: not a finished cache (no cache.json / index.parquet)")
        with open(info_path) as handle:
            self.info = json.load(handle)
        self.fields = fields_for(self.info["store"])
        self.dtype = np.dtype(self.info["dtype"])
        self.entries = {row["video_id"]: row for row in pq.read_table(index_path).to_pylist()}
        self.ids = sorted(self.entries)
        self.reader = get_format(self.info["format"]).Reader(
            os.path.join(self.folder, "shards"), self.entries.values(), frame_fields=self.fields, dtype=self.dtype,
            chunk_frames=self.info["chunk_frames"], cache_bytes=cache_bytes)

    def __len__(self):
        return len(self.ids)

    def read(self, video_id):
        if video_id not in self.entries:
            raise KeyError(f"{self.folder}: no video {video_id!r} in the cache")
        return self.reader.read(self.entries[video_id])


def open_cache(folder, cache_bytes=256 << 20):
    return CacheReader(folder, cache_bytes)


def read_ledger(folder):
    """The complete records of `folder/ledger.jsonl`, read-only: a line a running or killed job has
    not finished (no newline yet) is ignored, never cut, so readers can run beside a job. A finished
    line that is not a JSON record (the file was edited or damaged) raises UserError naming the file
    and the line: no reader can tell which units it meant."""
    path = os.path.join(folder, "ledger.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    records = []
    for number, line in enumerate(data[:data.rfind(b"\n") + 1].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            reason = f"is not valid JSON ({err.msg} at column {err.colno})"
        except ValueError:  # bytes that are not UTF-8
            reason = "is not valid JSON (not UTF-8 text)"
        else:
            if isinstance(record, dict) and "unit_id" in record:
                records.append(record)
                continue
            reason = "is not a unit record (a JSON object with a unit_id)"
        raise UserError(f"{path}: line {number} {reason}; the ledger was modified or damaged: restore it, "
                        f"or delete that line to redo its unit")
    return records


def shard_digest(folder):
    """sha256 over a shard folder's files (names and bytes, in name order) and their total size."""
    digest, size = hashlib.sha256(), 0
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        digest.update(name.encode())
    return digest.hexdigest(), size


def shard_size(folder):
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())


def check_shards(folder, records, mode="full"):
    """{shard id: problem} for the ledger records whose shard is missing or whose size ("size") or
    size and sha256 ("full") differ from what the ledger recorded when the shard was committed."""
    if mode not in ("full", "size"):
        raise ValueError(f"shard check must be 'full' or 'size', got {mode!r}")
    problems = {}
    for record in records:
        shard = os.path.join(folder, "shards", record["unit_id"])
        if not os.path.isdir(shard):
            problems[record["unit_id"]] = "missing"
            continue
        if mode == "size":
            size, digest = shard_size(shard), record["sha256"]
        else:
            digest, size = shard_digest(shard)
        if size != record["bytes"] or digest != record["sha256"]:
            problems[record["unit_id"]] = (f"{size} bytes, sha256 {digest[:12]}… differ from the ledger's "
                                           f"{record['bytes']} bytes, {record['sha256'][:12]}…")
    return problems
