"""The cache formats: the one list of them, and the interface each format module implements.

    FORMAT_NAMES          ("numpy", "mindrecord", "parquet"): the CLI's --format choices, the training
                          key's, the cache job's and the tests' (importing this module imports no format)
    get_format(name)      the format's module (imported then: pyarrow or MindSpore only when needed)

A format module exports a `Writer` (subclass of ShardWriter) and a `Reader` (subclass of ShardReader):

    with module.Writer(shard_folder, frame_fields=("mean", "std"), chunk_frames=16, frame_nbytes=...,
                       video_fields=("caption_embedding",)) as writer:
        offset = writer.add({"mean": (F, C, h, w), "std": ...}, label=3, caption="a cat",
                            arrays={"caption_embedding": (77, D)})
        writer.add_blob("empty_prompt_embedding", (77, D))
    writer.videos   # [{"offset", "frames", "label", "caption"}]: the shard's index rows

The shard is written under a staging name and appears as `shard_folder` only when the block ends
without an exception (latte_core.atomic.staged); on an exception the writer is closed and nothing is
left. What a shard holds:
- per-frame fields (the posterior `mean`/`std`, or one `sample`): arrays (frames, C, h, w) in the cache
  dtype, stored in the format's layout;
- per-video fields: `label` and `caption` go to the shard's index rows (`writer.videos`; the cache keeps
  them in index.parquet, the same for every format); arrays such as a 77 x D caption embedding are
  declared as `video_fields` and stored by the format, one per video, in their own dtype;
- blobs: named arrays of the shard as a whole (a cache keeps its per-cache ones, e.g. the empty-prompt
  embedding, in a shard folder of their own).
Nothing beyond the frame fields is written unless given, so a cache without them has the bytes of
the format's first version.

    reader = module.Reader(shards_dir, entries, frame_fields=..., dtype=..., chunk_frames=16)
    reader.read(entry)                         {field: all frames} + video arrays + label, caption
    reader.read_frames(entry, [k, ...])        {field: (len, C, h, w)}: frame k of a video, cheaply
    reader.read_single_frames([(entry, k), ...])  {field: (len, C, h, w)}: one frame of each of many videos
    reader.video_arrays(entry), reader.video_array(entry, name), reader.blob(shard, name)
    reader.stream_frames(requests, workers)    read_frames of each (entry, frame indices), in order

`entries` are index rows ({"shard", "offset", "frames", ...}) of every video of the shards to read.
`random_access` tells the loader how to read many clips: True, read_frames from its worker threads;
False, one stream_frames over the epoch (MindRecord reads rows fastest through its own pipeline).

Adding a format: one module `datasets/<name>_format.py` with its Writer and Reader, one line in
FORMATS below, and its tests: tests/test_formats.py runs the round trips over every registered format.
"""
import importlib
import math
import os

import numpy as np

from latte_core.atomic import staged

FORMATS = {"numpy": "numpy_format", "mindrecord": "mindrecord_format", "parquet": "parquet_format"}
FORMAT_NAMES = tuple(FORMATS)


def get_format(name):
    """The module of format `name`; ValueError naming the formats for another name."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose one of {', '.join(FORMAT_NAMES)}")
    return importlib.import_module(f".{FORMATS[name]}", __package__)


class ShardWriter:
    """What every format's Writer shares: keyword-only settings, the staging folder and its commit, the
    index rows and the per-video arrays and blobs. A format implements _open (start writing in
    self.staging; an open file writer goes in self.writer), _add_frames, _finish(video_arrays, blobs)
    (complete the files) and _close(writer) (how its file writer is closed)."""

    def __init__(self, folder, *, frame_fields, chunk_frames, frame_nbytes, video_fields=()):
        self.folder = os.fspath(folder)
        self.frame_fields, self.video_fields = tuple(frame_fields), tuple(video_fields)
        names = self.frame_fields + self.video_fields
        if not self.frame_fields or len(set(names)) != len(names):
            raise ValueError(f"frame and video fields must be named, each once: got {names}")
        self.chunk_frames, self.frame_nbytes = chunk_frames, frame_nbytes
        self.videos, self.video_arrays, self.blobs = [], {}, {}
        self.staging, self.writer, self.closed, self._stage = None, None, False, None

    def __enter__(self):
        self._stage = staged(self.folder, folder=True)
        self.staging = self._stage.__enter__()
        try:
            self._open()
        except BaseException:
            self._release()
            self._stage.discard()
            raise
        return self

    def add(self, frames, *, label=None, caption=None, arrays=None):
        """Store one video: `frames` {frame field: (F, C, h, w)}, `arrays` {video field: array}; returns its
        offset in the shard."""
        arrays = arrays or {}
        if set(frames) != set(self.frame_fields) or set(arrays) != set(self.video_fields):
            raise ValueError(f"a video needs frame fields {self.frame_fields} and video fields "
                             f"{self.video_fields}, got {tuple(frames)} and {tuple(arrays)}")
        offset = len(self.videos)
        self._add_frames(offset, frames)
        if arrays:
            self.video_arrays[offset] = {name: np.asarray(array) for name, array in arrays.items()}
        self.videos.append({"offset": offset, "frames": len(frames[self.frame_fields[0]]), "label": label,
                            "caption": caption})
        return offset

    def add_blob(self, name, array):
        if name in self.blobs:
            raise ValueError(f"blob {name!r} is already in this shard")
        self.blobs[name] = np.asarray(array)

    def __exit__(self, exc_type, exc, tb):
        failure = exc
        if failure is None:
            try:
                self._finish(self.video_arrays, self.blobs)
            except BaseException as err:
                failure = err
        if failure is not None:
            self._release()
        self.closed = True
        if failure is None:
            self._stage.commit()
            return False
        self._stage.discard()
        if failure is not exc:
            raise failure
        return False

    def _open(self):
        pass

    def _add_frames(self, offset, frames):
        raise NotImplementedError

    def _finish(self, video_arrays, blobs):
        pass

    def _close_writer(self):
        writer, self.writer = self.writer, None
        if writer is not None:
            self._close(writer)

    def _release(self):
        """Close the file writer after a failure (never raises: the staging folder goes anyway)."""
        try:
            self._close_writer()
        except Exception:
            pass

    def _close(self, writer):
        pass


class ShardReader:
    """What every format's Reader shares; a format implements _read_video(entry, fields),
    read_frames, and the extras (_extras(shard) -> ({offset: {name: array}}, {name: array}), or
    video_arrays and blob themselves)."""

    random_access = True

    def __init__(self, shards_dir, entries, *, frame_fields, dtype, chunk_frames, cache_bytes=256 << 20):
        self.shards_dir = os.fspath(shards_dir)
        self.frame_fields, self.dtype = tuple(frame_fields), np.dtype(dtype)
        self.chunk_frames, self.cache_bytes = chunk_frames, cache_bytes
        self.entries = list(entries)
        self._extras_of = {}

    def shard_folder(self, shard):
        return os.path.join(self.shards_dir, shard)

    def read(self, entry, fields=None):
        """Every frame of one video {field: (frames, C, h, w)}, its video arrays, label and caption."""
        out = dict(self._read_video(entry, tuple(fields or self.frame_fields)))
        for field, array in out.items():
            if array.dtype != self.dtype or len(array) != entry["frames"]:
                raise IOError(f"{self.shard_folder(entry['shard'])}: video {entry['offset']} {field} is "
                              f"{array.dtype} x {len(array)} frames, the index says {self.dtype} x "
                              f"{entry['frames']}")
        out.update(self.video_arrays(entry))
        out["label"], out["caption"] = entry.get("label"), entry.get("caption")
        return out

    def video_arrays(self, entry):
        return dict(self._extras(entry["shard"])[0].get(entry["offset"], {}))

    def video_array(self, entry, name):
        """One per-video array of one video (e.g. its caption embedding); KeyError naming the shard if the
        video has none of that name."""
        arrays = self._extras(entry["shard"])[0].get(entry["offset"], {})
        if name not in arrays:
            raise KeyError(f"{self.shard_folder(entry['shard'])}: video {entry['offset']} has no {name!r}")
        return arrays[name]

    def blob(self, shard, name):
        blobs = self._extras(shard)[1]
        if name not in blobs:
            raise KeyError(f"{self.shard_folder(shard)}: no blob {name!r}")
        return blobs[name]

    def _extras(self, shard):
        if shard not in self._extras_of:
            self._extras_of[shard] = self._read_extras(self.shard_folder(shard))
        return self._extras_of[shard]

    def stream_frames(self, requests, num_parallel_workers=1, fields=None):
        """read_frames(entry, frame_indices) of each request, in order."""
        for entry, frame_indices in requests:
            yield self.read_frames(entry, frame_indices, fields)

    def _read_video(self, entry, fields):
        raise NotImplementedError

    def read_frames(self, entry, frame_indices, fields=None):
        raise NotImplementedError

    def read_single_frames(self, frames, fields=None):
        """{field: (len(frames), C, h, w)}: frame k of the video of each (entry, k) of `frames` (a sample's
        images), in order."""
        return joined_frames([self.read_frames(entry, [index], fields) for entry, index in frames])

    def _read_extras(self, folder):
        raise NotImplementedError


def joined_frames(singles):
    """Single-frame reads [{field: (1, C, h, w)}, ...] -> {field: (len(singles), C, h, w)}."""
    return {field: np.concatenate([single[field] for single in singles]) for field in singles[0]}


def chunk_rows(entries, chunk_frames):
    """For formats of one row per chunk of `chunk_frames` frames: the row of each video's first chunk
    {(shard, offset): row} and the rows of each shard {shard: rows}."""
    by_shard = {}
    for entry in entries:
        by_shard.setdefault(entry["shard"], []).append((entry["offset"], entry["frames"]))
    first, rows = {}, {}
    for shard, videos in by_shard.items():
        row = 0
        for offset, frames in sorted(videos):
            first[(shard, offset)] = row
            row += math.ceil(frames / chunk_frames)
        rows[shard] = row
    return first, rows


def extras_rows(video_arrays, blobs):
    """Per-video arrays and blobs as rows {video (-1 for a blob), name, dtype, shape, data} for the
    formats that keep them as records beside the frame chunks."""
    items = [(offset, name, array) for offset, arrays in sorted(video_arrays.items()) for name, array in arrays.items()]
    items += [(-1, name, array) for name, array in sorted(blobs.items())]
    return [{"video": offset, "name": name, "dtype": array.dtype.str, "shape": list(array.shape),
             "data": np.ascontiguousarray(array).tobytes()} for offset, name, array in items]


def extras_from_rows(rows):
    """The inverse of extras_rows: ({offset: {name: array}}, {name: array})."""
    video_arrays, blobs = {}, {}
    for row in rows:
        array = np.frombuffer(row["data"], dtype=np.dtype(row["dtype"])).reshape(list(row["shape"]))
        if int(row["video"]) < 0:
            blobs[row["name"]] = array
        else:
            video_arrays.setdefault(int(row["video"]), {})[row["name"]] = array
    return video_arrays, blobs
