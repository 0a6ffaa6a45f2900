"""numpy cache shards: one memory-mappable .npy file per video and field.

    <shard>/<offset>.<field>.npy   (frames, C, h, w) in the cache dtype, per frame field
    <shard>/<offset>.<name>.npy    a per-video array (e.g. the caption embedding), when the cache has one
    <shard>/blob.<name>.npy        a blob of the shard
"""
import os

import numpy as np

from .formats import ShardReader, ShardWriter


class Writer(ShardWriter):
    def _add_frames(self, offset, frames):
        for field in self.frame_fields:
            np.save(os.path.join(self.staging, f"{offset}.{field}.npy"), frames[field])

    def _finish(self, video_arrays, blobs):
        for offset, arrays in video_arrays.items():
            for name, array in arrays.items():
                np.save(os.path.join(self.staging, f"{offset}.{name}.npy"), array)
        for name, array in blobs.items():
            np.save(os.path.join(self.staging, f"blob.{name}.npy"), array)


class Reader(ShardReader):
    def _path(self, entry, name):
        return os.path.join(self.shard_folder(entry["shard"]), f"{entry['offset']}.{name}.npy")

    def _read_video(self, entry, fields):
        """Memory-mapped arrays (no copy until they are used)."""
        return {field: np.load(self._path(entry, field), mmap_mode="r") for field in fields}

    def read_frames(self, entry, frame_indices, fields=None):
        """Only the frames at `frame_indices`, copied out of the memory maps (the maps are closed again,
        so streaming many videos does not grow the resident memory)."""
        out = {}
        for field in fields or self.frame_fields:
            array = np.load(self._path(entry, field), mmap_mode="r")
            out[field] = np.asarray(array[frame_indices])
            del array
        return out

    def video_arrays(self, entry):
        names = {name.split(".")[1] for name in os.listdir(self.shard_folder(entry["shard"]))
                 if name.startswith(f"{entry['offset']}.")} - set(self.frame_fields)
        return {name: np.load(self._path(entry, name)) for name in sorted(names)}

    def blob(self, shard, name):
        path = os.path.join(self.shard_folder(shard), f"blob.{name}.npy")
        if not os.path.isfile(path):
            raise KeyError(f"{self.shard_folder(shard)}: no blob {name!r}")
        return np.load(path)
