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

`entries` are index rows ({"shard", "offset", "frames", ...}) of every video of the shards to read.
The loader calls read_frames and read_single_frames from its worker threads: a Reader must allow that.

Adding a format: one module `datasets/<name>_format.py` with its Writer and Reader, one line in
FORMATS below, and its tests: tests/test_formats.py runs the round trips over every registered format.
"""
import importlib
import math
import os
import threading

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

    def _read_video(self, entry, fields):
        raise NotImplementedError

    def read_frames(self, entry, frame_indices, fields=None):
        raise NotImplementedError

    def read_single_frames(self, frames, fields=None):
        """{field: (len(frames), C, h, w)}: frame k of the video of each (entry, k) of `frames` (a sample's
        images), in order."""
        singles = [self.read_frames(entry, [index], fields) for entry, index in frames]
        return {field: np.concatenate([single[field] for single in singles]) for field in singles[0]}

    def _read_extras(self, folder):
        raise NotImplementedError


def read_into(descriptor, path, array, offset):
    """Fill `array` (contiguous) with the file's bytes at `offset`; IOError naming the file if it ends first."""
    wanted = array.nbytes
    got = os.preadv(descriptor, [memoryview(array).cast("B")], offset)
    if got != wanted:
        raise IOError(f"{path}: {got} bytes at offset {offset} where {wanted} should be: the file is truncated")


class ChunkLayout:
    """Where one shard's frames lie: `addresses[row, j]` is the byte address in `path` of chunk row `row`'s
    first frame of frame field j (the Reader's frame_fields order), the chunk's frames one after another,
    each `frame_bytes` long, of shape `frame_shape`."""

    def __init__(self, path, addresses, frame_shape, frame_bytes):
        self.path, self.addresses = path, addresses
        self.frame_shape, self.frame_bytes = frame_shape, frame_bytes


class ChunkedShardReader(ShardReader):
    """For formats of one row per chunk of `chunk_frames` frames whose frames lie as raw bytes in the file:
    the format implements _parse_layout(shard) -> a ChunkLayout checked against the cache index (or None
    for a shard it cannot read that way), and read_direct then preads frames straight into place. A
    random frame costs a pread of its own bytes, not the decoding of its chunk."""

    def __init__(self, shards_dir, entries, **settings):
        super().__init__(shards_dir, entries, **settings)
        self._entries_of = {}
        for entry in self.entries:
            self._entries_of.setdefault(entry["shard"], []).append(entry)
        self._first_rows, self._shard_rows = {}, {}
        for shard, videos in self._entries_of.items():
            row = 0
            for entry in sorted(videos, key=lambda e: e["offset"]):
                self._first_rows[(shard, entry["offset"])] = row
                row += math.ceil(entry["frames"] / self.chunk_frames)
            self._shard_rows[shard] = row
        self._layouts, self._layout_lock = {}, threading.Lock()

    def _parse_layout(self, shard):
        raise NotImplementedError

    def layout(self, shard):
        """The shard's ChunkLayout (or None), parsed once, by whichever reading thread comes first."""
        with self._layout_lock:
            if shard not in self._layouts:
                self._layouts[shard] = self._parse_layout(shard)
            return self._layouts[shard]

    def expected_chunks(self, shard):
        """(rows, 3) int64: (video offset, first frame, frames) of each chunk row of a shard, in row order,
        from the cache index."""
        rows = np.zeros((self._shard_rows[shard], 3), np.int64)
        for entry in self._entries_of[shard]:
            first = self._first_rows[(shard, entry["offset"])]
            starts = np.arange(0, entry["frames"], self.chunk_frames)
            rows[first:first + len(starts)] = np.stack(
                [np.full(len(starts), entry["offset"]), starts, np.minimum(self.chunk_frames, entry["frames"] - starts)], 1)
        return rows

    def read_direct(self, frames, fields=None):
        """{field: (len(frames), C, h, w)}: frame k of the video of each (entry, k), its shard's layout
        known, read straight into place: one pread per field for each run of frames that lie one after
        another in one chunk. A video's layout and first chunk row are looked up as its frames begin, not
        for every frame: the loader's reading threads share the GIL this loop holds."""
        fields = tuple(fields or self.frame_fields)
        runs, entry = [], None  # runs: [layout, chunk row, first frame in the chunk, first place, end place]
        for place, (frame_entry, index) in enumerate(frames):
            index = int(index)
            if not 0 <= index < frame_entry["frames"]:
                raise IndexError(f"frame {index} of a video of {frame_entry['frames']} frames")
            if frame_entry is not entry:
                entry = frame_entry
                layout, first_row = self.layout(entry["shard"]), self._first_rows[(entry["shard"], entry["offset"])]
            chunk, within = divmod(index, self.chunk_frames)
            run = runs[-1] if runs else None
            if run and run[0] is layout and run[1] == first_row + chunk and run[2] + place - run[3] == within:
                run[4] = place + 1
            else:
                runs.append([layout, first_row + chunk, within, place, place + 1])
        frame_shape = runs[0][0].frame_shape
        if any(run[0].frame_shape != frame_shape for run in runs):
            raise IOError(f"{self.shards_dir}: frames of shapes {sorted({run[0].frame_shape for run in runs})} "
                          f"asked for as one array")
        out = {field: np.empty((len(frames),) + frame_shape, self.dtype) for field in fields}
        columns = [self.frame_fields.index(field) for field in fields]
        for layout, row, within, first, last in runs:
            descriptor = os.open(layout.path, os.O_RDONLY)
            try:
                for field, column in zip(fields, columns):
                    read_into(descriptor, layout.path, out[field][first:last],
                              int(layout.addresses[row, column]) + within * layout.frame_bytes)
            finally:
                os.close(descriptor)
        return out


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
