"""Reading a latent cache folder written by `latte cache`, whatever its format.

    CACHE/cache.json       the fingerprint: everything that changes the stored bytes
    CACHE/index.parquet    video_id -> shard, offset, frames, label, caption
    CACHE/shards/<shard>/  one folder per shard, in the format's layout (see *_format.py)
    CACHE/ledger.jsonl, CACHE/failures.parquet, CACHE/units/ (job bookkeeping)
"""
import json
import os

import numpy as np
import pyarrow.parquet as pq

from . import mindrecord_format, numpy_format, parquet_format

FORMATS = {"numpy": numpy_format, "mindrecord": mindrecord_format, "parquet": parquet_format}
POSTERIOR_FIELDS = ("mean", "std")
SAMPLE_FIELDS = ("sample",)


def fields_for(store):
    if store not in ("posterior", "sample"):
        raise ValueError(f"store must be 'posterior' or 'sample', got {store!r}")
    return POSTERIOR_FIELDS if store == "posterior" else SAMPLE_FIELDS


class CacheReader:
    """`ids` (video ids, sorted) and `read(video_id)` -> {"mean", "std"} or {"sample"} arrays of shape
    (frames, C, h, w), plus "label" and "caption" when the cache has them."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        info_path = os.path.join(self.folder, "cache.json")
        index_path = os.path.join(self.folder, "index.parquet")
        if not os.path.isfile(info_path) or not os.path.isfile(index_path):
            raise FileNotFoundError(f"{self.folder}: not a finished cache (no cache.json / index.parquet)")
        with open(info_path) as handle:
            self.info = json.load(handle)
        self.format = FORMATS[self.info["format"]]
        self.fields = fields_for(self.info["store"])
        self.dtype = np.dtype(self.info["dtype"])
        self.entries = {row["video_id"]: row for row in pq.read_table(index_path).to_pylist()}
        self.ids = sorted(self.entries)

    def __len__(self):
        return len(self.ids)

    def read(self, video_id):
        if video_id not in self.entries:
            raise KeyError(f"{self.folder}: no video {video_id!r} in the cache")
        entry = self.entries[video_id]
        shard = os.path.join(self.folder, "shards", entry["shard"])
        out = dict(self.format.read_video(shard, entry["offset"], self.fields, self.dtype, entry["frames"]))
        out["label"], out["caption"] = entry["label"], entry["caption"]
        return out


def open_cache(folder):
    return CacheReader(folder)
