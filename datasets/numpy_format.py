"""numpy cache shards: one memory-mappable .npy file per video and field.

    <shard>/<offset>.<field>.npy   (frames, C, h, w) in the cache dtype
"""
import os

import numpy as np


class ShardWriter:
    def __init__(self, folder, *, fields, chunk_frames, frame_nbytes):
        self.folder = folder
        self.fields = fields
        self.count = 0

    def add(self, arrays):
        """Store one video's arrays {field: (frames, C, h, w)}; returns its offset in the shard."""
        for field in self.fields:
            np.save(os.path.join(self.folder, f"{self.count}.{field}.npy"), arrays[field])
        self.count += 1
        return self.count - 1

    def close(self):
        pass


def read_frames(folder, offset, fields, frame_indices):
    """Only the frames at `frame_indices` of one video, copied out of the memory maps (the maps are
    closed again, so streaming many videos does not grow the resident memory)."""
    out = {}
    for field in fields:
        array = np.load(os.path.join(folder, f"{offset}.{field}.npy"), mmap_mode="r")
        out[field] = np.asarray(array[frame_indices])
        del array
    return out


def read_video(folder, offset, fields, dtype, frames):
    """Memory-mapped arrays of one video (no copy until they are used)."""
    out = {field: np.load(os.path.join(folder, f"{offset}.{field}.npy"), mmap_mode="r") for field in fields}
    for field, array in out.items():
        if array.dtype != dtype or len(array) != frames:
            raise IOError(f"{folder}: video {offset} {field} is {array.dtype} x {len(array)} frames, "
                          f"the index says {dtype} x {frames}")
    return out
