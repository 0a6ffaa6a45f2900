"""numpy cache shards: one memory-mappable .npy file per video and field.

    <shard>/<offset>.<field>.npy   (frames, C, h, w) in the cache dtype, per frame field
    <shard>/<offset>.<name>.npy    a per-video array (e.g. the caption embedding), when the cache has one
    <shard>/blob.<name>.npy        a blob of the shard
"""
import functools
import os

import numpy as np

from .formats import ShardReader, ShardWriter, read_into

HEADERS_KEPT = 1 << 16  # parsed .npy headers a reader keeps (about 200 bytes each)
SPAN_READ_LIMIT = 4  # a clip's frames are read as one span unless it holds over 4x the frames asked for
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


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
    def __init__(self, shards_dir, entries, **settings):
        super().__init__(shards_dir, entries, **settings)
        # Each file's header is parsed once (shards never change once committed): a random single-frame
        # read is then an open, a pread and a close. Parsing it on every read (np.load) cost more than
        # the read itself.
        self._layout = functools.lru_cache(maxsize=HEADERS_KEPT)(self._parse_header)

    def _path(self, entry, name):
        return os.path.join(self.shard_folder(entry["shard"]), f"{entry['offset']}.{name}.npy")

    def _read_video(self, entry, fields):
        """Memory-mapped arrays (no copy until they are used)."""
        return {field: np.load(self._path(entry, field), mmap_mode="r") for field in fields}

    def _parse_header(self, path, frames):
        """(data offset, frame shape) of a frame field's file, checked against the index (`frames`) and
        the cache dtype."""
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = HEADER_READERS.get(version)
            if read_header is None:
                raise IOError(f"{path}: .npy format version {version} is not one numpy.save writes here")
            shape, fortran_order, dtype = read_header(handle)
            offset = handle.tell()
        if dtype != self.dtype or fortran_order or not shape or shape[0] != frames:
            raise IOError(f"{path}: holds {dtype} {shape}{' in Fortran order' if fortran_order else ''}, the "
                          f"index says {self.dtype} x {frames} frames")
        return offset, tuple(shape[1:])

    def read_frames(self, entry, frame_indices, fields=None):
        """Only the frames at `frame_indices`, read with pread into fresh arrays (no memory map: streaming
        many videos does not grow the resident memory): the frames from the first to the last in one
        read, or each frame on its own when that span is mostly frames not asked for."""
        indices = np.asarray(frame_indices, np.int64)
        first, last = int(indices.min()), int(indices.max())
        if first < 0 or last >= entry["frames"]:
            raise IndexError(f"frames {first}..{last} of a video of {entry['frames']} frames")
        span = last - first + 1
        whole_span = span <= SPAN_READ_LIMIT * len(indices)
        consecutive = bool((np.diff(indices) == 1).all())  # the span is exactly the frames asked for
        out = {}
        for field in fields or self.frame_fields:
            path = self._path(entry, field)
            offset, frame_shape = self._layout(path, entry["frames"])
            frames = np.empty(((span if whole_span else len(indices)),) + frame_shape, self.dtype)
            frame_bytes = frames[0].nbytes
            descriptor = os.open(path, os.O_RDONLY)
            try:
                if whole_span:
                    read_into(descriptor, path, frames, offset + first * frame_bytes)
                else:
                    for place, index in enumerate(indices):
                        read_into(descriptor, path, frames[place], offset + int(index) * frame_bytes)
            finally:
                os.close(descriptor)
            out[field] = frames[indices - first] if whole_span and not consecutive else frames
        return out

    def read_single_frames(self, frames, fields=None):
        """Each frame read with pread straight into its place in the output."""
        out = {}
        for field in fields or self.frame_fields:
            array = None
            for place, (entry, index) in enumerate(frames):
                if not 0 <= index < entry["frames"]:
                    raise IndexError(f"frame {index} of a video of {entry['frames']} frames")
                path = self._path(entry, field)
                offset, frame_shape = self._layout(path, entry["frames"])
                if array is None:
                    array = np.empty((len(frames),) + frame_shape, self.dtype)
                elif frame_shape != array.shape[1:]:
                    raise IOError(f"{path}: frames of shape {frame_shape}, other videos' are {array.shape[1:]}")
                descriptor = os.open(path, os.O_RDONLY)
                try:
                    read_into(descriptor, path, array[place], offset + int(index) * array[place].nbytes)
                finally:
                    os.close(descriptor)
            out[field] = array
        return out

    def video_arrays(self, entry):
        names = {name.split(".")[1] for name in os.listdir(self.shard_folder(entry["shard"]))
                 if name.startswith(f"{entry['offset']}.")} - set(self.frame_fields)
        return {name: np.load(self._path(entry, name)) for name in sorted(names)}

    def video_array(self, entry, name):
        path = self._path(entry, name)
        if not os.path.isfile(path):
            raise KeyError(f"{self.shard_folder(entry['shard'])}: video {entry['offset']} has no {name!r}")
        return np.load(path)

    def blob(self, shard, name):
        path = os.path.join(self.shard_folder(shard), f"blob.{name}.npy")
        if not os.path.isfile(path):
            raise KeyError(f"{self.shard_folder(shard)}: no blob {name!r}")
        return np.load(path)
