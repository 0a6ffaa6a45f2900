"""Parquet cache shards: one row per chunk of frames, readable by pyarrow, pandas and dask.

    <shard>/shard.parquet, columns: video (int32 offset), start (int32), frames (int32),
    shape (list<int32>), <field> (binary: the chunk's array in the cache dtype)
    <shard>/extras.parquet (only with per-video arrays or blobs), columns: video (int32, -1 for a
    blob), name (string), dtype (string), shape (list<int32>), data (binary)

Each chunk row is a row group of its own, plain and uncompressed, so a chunk's field is one PLAIN
value (a little-endian uint32 length, then the bytes) ending its column chunk: the Reader locates each
chunk's frames once per shard from the footer, checks them against the cache index and the length
prefixes, and then reads any frame with one pread of its own bytes (an image of image-video joint
training no longer decodes its whole chunk: 60-170 us a row group, and the cache of decoded row groups
it needed thrashed on caches larger than its 256 MB). Shards written with larger row groups (an earlier
layout) or compressed are read through pyarrow, row group by row group, through that cache. Rows are
written to the file in batches of about `WRITE_BATCH_BYTES`.
"""
import collections
import logging
import os
import struct
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .formats import ChunkedShardReader, ChunkLayout, ShardWriter, extras_from_rows, extras_rows

logger = logging.getLogger(__name__)

FILE_NAME = "shard.parquet"
EXTRAS_NAME = "extras.parquet"
WRITE_BATCH_BYTES = 96 << 20  # rows buffered before they are written
OPEN_FILES_KEPT = 64  # Parquet files each reading thread keeps open (their footers parsed)
EXTRAS_SCHEMA = pa.schema([("video", pa.int32()), ("name", pa.string()), ("dtype", pa.string()),
                           ("shape", pa.list_(pa.int32())), ("data", pa.binary())])


class Writer(ShardWriter):
    def _open(self):
        self.schema = pa.schema([("video", pa.int32()), ("start", pa.int32()), ("frames", pa.int32()),
                                 ("shape", pa.list_(pa.int32()))] + [(f, pa.binary()) for f in self.frame_fields])
        # plain and uncompressed: float16 latents barely compress, and readers then map the file
        # instead of decoding into buffers (which, freed, stayed in the process: 1.3 GB RSS over a
        # 0.5 GB cache)
        self.writer = pq.ParquetWriter(os.path.join(self.staging, FILE_NAME), self.schema, compression="none",
                                       use_dictionary=False)
        self.rows, self.buffered_bytes = [], 0

    def _add_frames(self, offset, frames):
        for start in range(0, len(frames[self.frame_fields[0]]), self.chunk_frames):
            row = {"video": offset, "start": start}
            for field in self.frame_fields:
                chunk = np.ascontiguousarray(frames[field][start:start + self.chunk_frames])
                row.update(frames=len(chunk), shape=list(chunk.shape))
                row[field] = chunk.tobytes()
                self.buffered_bytes += chunk.nbytes
            self.rows.append(row)
            if self.buffered_bytes >= WRITE_BATCH_BYTES:
                self._flush()

    def _flush(self):
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=1)
            self.rows, self.buffered_bytes = [], 0

    def _finish(self, video_arrays, blobs):
        self._flush()
        self._close_writer()
        rows = extras_rows(video_arrays, blobs)
        if rows:
            pq.write_table(pa.Table.from_pylist(rows, schema=EXTRAS_SCHEMA), os.path.join(self.staging, EXTRAS_NAME),
                           compression="none")

    def _close(self, writer):
        writer.close()


class Reader(ChunkedShardReader):
    def __init__(self, shards_dir, entries, **settings):
        super().__init__(shards_dir, entries, **settings)
        self._row_groups = _RowGroupCache(self.cache_bytes)  # for shards of the earlier layout only

    def _parse_layout(self, shard):
        """Each chunk row's frame bytes from the footer: a row group of one row whose field column chunk
        ends with the value; None for a shard of several rows per row group or compressed. IOError
        naming the file where the shard disagrees with the cache index."""
        path = os.path.join(self.shard_folder(shard), FILE_NAME)
        try:
            parquet = pq.ParquetFile(path)
            metadata = parquet.metadata
            small = parquet.read(columns=["video", "start", "shape"], use_threads=False)
        except (OSError, pa.ArrowException) as err:
            raise IOError(f"{path}: not a readable Parquet shard ({err})") from None
        expected = self.expected_chunks(shard)
        stored = np.stack([small.column("video").to_numpy(), small.column("start").to_numpy()], 1) \
            if small.num_rows else np.zeros((0, 2), np.int64)
        if len(stored) != len(expected) or (stored != expected[:, :2]).any():
            raise IOError(f"{path}: its {len(stored)} chunk rows are not the {len(expected)} chunks of the cache "
                          f"index (video and first frame of each, in order)")
        shapes = small.column("shape").to_pylist()
        frame_shapes = {tuple(shape[1:]) for shape in shapes}
        if len(frame_shapes) != 1 or any(shape[0] != n for shape, n in zip(shapes, expected[:, 2])):
            raise IOError(f"{path}: chunk shapes {sorted(frame_shapes)[:3]}... do not hold the cache index's frames "
                          f"of one shape")
        if metadata.num_row_groups != metadata.num_rows:
            return None
        leaf = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
        frame_shape = frame_shapes.pop()
        frame_bytes = int(np.prod(frame_shape)) * self.dtype.itemsize
        addresses = np.zeros((len(expected), len(self.frame_fields)), np.int64)
        descriptor = os.open(path, os.O_RDONLY)
        try:
            for row, frames in enumerate(expected[:, 2]):
                group = metadata.row_group(row)
                for j, field in enumerate(self.frame_fields):
                    chunk = group.column(leaf[field])
                    if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page or chunk.num_values != 1 \
                            or "PLAIN" not in chunk.encodings:
                        return None
                    length = int(frames) * frame_bytes
                    address = chunk.data_page_offset + chunk.total_compressed_size - length
                    if os.pread(descriptor, 4, address - 4) != struct.pack("<I", length):
                        raise IOError(f"{path}: row {row}'s {field!r} is not the {length} bytes of its "
                                      f"{frames} frames of {frame_shape} in {self.dtype}")
                    addresses[row, j] = address
        finally:
            os.close(descriptor)
        return ChunkLayout(path, addresses, frame_shape, frame_bytes)

    def _read_video(self, entry, fields):
        table = pq.read_table(os.path.join(self.shard_folder(entry["shard"]), FILE_NAME),
                              filters=[("video", "=", entry["offset"])], columns=["start", "shape"] + list(fields))
        rows = sorted(table.to_pylist(), key=lambda row: row["start"])
        out = {}
        for field in fields:
            parts = [np.frombuffer(row[field], dtype=self.dtype).reshape(row["shape"]) for row in rows]
            out[field] = np.concatenate(parts) if parts else np.zeros((0,), self.dtype)
        return out

    def _chunk(self, entry, chunk, fields):
        """{field: (frames, C, h, w)} of one chunk row of a video, from the cache of decoded row groups
        shared by the reading threads, checked against the index."""
        folder = self.shard_folder(entry["shard"])
        row = self._first_rows[(entry["shard"], entry["offset"])] + chunk
        offset, first_frame, arrays = self._row_groups.row(folder, row, fields, self.dtype)
        if offset != entry["offset"] or first_frame != chunk * self.chunk_frames:
            raise IOError(f"{folder}: row {row} holds video {offset} frame {first_frame}, the index says video "
                          f"{entry['offset']} frame {chunk * self.chunk_frames}")
        return arrays

    def read_frames(self, entry, frame_indices, fields=None):
        """The frames at `frame_indices`: read directly, or from the decoded chunk rows that hold them."""
        if self.layout(entry["shard"]) is not None:
            return self.read_direct([(entry, k) for k in frame_indices], fields)
        fields = tuple(fields or self.frame_fields)
        chunks = range(min(frame_indices) // self.chunk_frames, max(frame_indices) // self.chunk_frames + 1)
        parts = [self._chunk(entry, chunk, fields) for chunk in chunks]
        at = np.asarray(frame_indices) - chunks[0] * self.chunk_frames
        return {field: (parts[0][field] if len(parts) == 1 else np.concatenate([part[field] for part in parts]))[at]
                for field in fields}

    def read_single_frames(self, frames, fields=None):
        """Each frame read directly, or copied from its decoded chunk row, into its place in the output."""
        if all(self.layout(entry["shard"]) is not None for entry, _ in frames):
            return self.read_direct(frames, fields)
        fields = tuple(fields or self.frame_fields)
        out = {}
        for place, (entry, index) in enumerate(frames):
            index = int(index)
            if not 0 <= index < entry["frames"]:
                raise IndexError(f"frame {index} of a video of {entry['frames']} frames")
            arrays = self._chunk(entry, index // self.chunk_frames, fields)
            for field in fields:
                frame = arrays[field][index % self.chunk_frames]
                if field not in out:
                    out[field] = np.empty((len(frames),) + frame.shape, self.dtype)
                elif frame.shape != out[field].shape[1:]:
                    raise IOError(f"{self.shard_folder(entry['shard'])}: frames of shape {frame.shape}, other "
                                  f"videos' are {out[field].shape[1:]}")
                out[field][place] = frame
        return out

    def _read_extras(self, folder):
        path = os.path.join(folder, EXTRAS_NAME)
        return extras_from_rows(pq.read_table(path).to_pylist()) if os.path.isfile(path) else ({}, {})


def _chunk_of(table, row, fields, dtype):
    """(video offset, first frame, {field: array}) of one row of a row group, without copying the bytes."""
    shape = table.column("shape")[row].as_py()
    arrays = {field: np.frombuffer(table.column(field)[row].as_buffer(), dtype=dtype).reshape(shape)
              for field in fields}
    return table.column("video")[row].as_py(), table.column("start")[row].as_py(), arrays


def _prefer_jemalloc():
    """Arrow's default allocator here (mimalloc) keeps freed row groups: streaming a 0.5 GB Parquet
    cache through a 256 MB row-group cache grew the process to 1.3 GB; with jemalloc it stays near
    the cache size. Buffers remember their own pool, so switching is safe at any time."""
    if pa.default_memory_pool().backend_name == "mimalloc":
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            logger.debug("pyarrow has no jemalloc; Parquet reading may hold on to freed memory")


class _RowGroupCache:
    """Decoded Parquet row groups (each row's video, first frame and arrays), least recently used dropped
    first once `max_bytes` is exceeded, and the open files they come from (per thread: a ParquetFile is
    not shared between reading threads)."""

    def __init__(self, max_bytes):
        _prefer_jemalloc()
        self.max_bytes = max_bytes
        self.groups = collections.OrderedDict()  # (folder, row group, fields) -> (its rows decoded, bytes)
        self.held_bytes = 0
        self.bounds = {}
        self.lock = threading.Lock()
        self.local = threading.local()

    def _file(self, folder):
        """This thread's open ParquetFile of a shard (memory-mapped; footer parsed once)."""
        files = getattr(self.local, "files", None)
        if files is None:
            files = self.local.files = collections.OrderedDict()
        parquet = files.get(folder)
        if parquet is None:
            parquet = files[folder] = pq.ParquetFile(os.path.join(folder, FILE_NAME), memory_map=True)
            if len(files) > OPEN_FILES_KEPT:
                files.popitem(last=False)  # closed once no decoded table maps it
        files.move_to_end(folder)
        return parquet

    def row(self, folder, row, fields, dtype):
        """(video offset, first frame, {field: array}) of shard row `row`, its arrays views of the cached
        row group, decoded once (pyarrow's per-value access, 15-20 us a value here, cost more than
        copying a frame out)."""
        with self.lock:
            bounds = self.bounds.get(folder)
        if bounds is None:
            metadata = self._file(folder).metadata
            bounds = np.cumsum([0] + [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])
            with self.lock:
                self.bounds[folder] = bounds
        if not 0 <= row < bounds[-1]:
            raise IOError(f"{folder}: no row {row} (the shard holds {bounds[-1]})")
        group = int(np.searchsorted(bounds, row, side="right") - 1)
        key = (folder, group, tuple(fields))
        with self.lock:
            rows = self.groups.get(key, (None,))[0]
            if rows is not None:
                self.groups.move_to_end(key)
        if rows is None:  # read outside the lock, so parallel workers read different row groups at once
            # use_threads=False: a chunk row's few columns cost 3x as much when spread over pyarrow's pool
            # (170 against 60 us here), and the loader's own workers already read in parallel
            table = self._file(folder).read_row_group(group, columns=["video", "start", "shape"] + list(fields),
                                                      use_threads=False)
            rows = [_chunk_of(table, i, fields, dtype) for i in range(table.num_rows)]
            with self.lock:
                if key not in self.groups:
                    self.groups[key] = rows, table.nbytes
                    self.held_bytes += table.nbytes
                while len(self.groups) > 1 and self.held_bytes > self.max_bytes:
                    self.held_bytes -= self.groups.popitem(last=False)[1][1]
        return rows[row - int(bounds[group])]
