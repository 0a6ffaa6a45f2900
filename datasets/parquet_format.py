"""Parquet cache shards: one row per chunk of frames, readable by pyarrow, pandas and dask.

    <shard>/shard.parquet, columns: video (int32 offset), start (int32), frames (int32),
    shape (list<int32>), <field> (binary: the chunk's array in the cache dtype)
    <shard>/extras.parquet (only with per-video arrays or blobs), columns: video (int32, -1 for a
    blob), name (string), dtype (string), shape (list<int32>), data (binary)

Each chunk row is a row group of its own: Parquet's smallest unit of reading is a row group's column,
so a random frame (an image of image-video joint training) then costs one chunk, not the whole shard
(caches written with larger row groups read the same, slower). Rows are written to the file in
batches of about `WRITE_BATCH_BYTES`.
"""
import collections
import logging
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .formats import ShardReader, ShardWriter, chunk_rows, extras_from_rows, extras_rows

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


class Reader(ShardReader):
    def __init__(self, shards_dir, entries, **settings):
        super().__init__(shards_dir, entries, **settings)
        self._first_rows, _ = chunk_rows(self.entries, self.chunk_frames)
        self._row_groups = _RowGroupCache(self.cache_bytes)

    def _read_video(self, entry, fields):
        table = pq.read_table(os.path.join(self.shard_folder(entry["shard"]), FILE_NAME),
                              filters=[("video", "=", entry["offset"])], columns=["start", "shape"] + list(fields))
        rows = sorted(table.to_pylist(), key=lambda row: row["start"])
        out = {}
        for field in fields:
            parts = [np.frombuffer(row[field], dtype=self.dtype).reshape(row["shape"]) for row in rows]
            out[field] = np.concatenate(parts) if parts else np.zeros((0,), self.dtype)
        return out

    def read_frames(self, entry, frame_indices, fields=None):
        """The frames at `frame_indices` from the chunk rows that hold them, through a cache of decoded
        row groups shared by the reading threads."""
        fields = tuple(fields or self.frame_fields)
        folder = self.shard_folder(entry["shard"])
        first_row = self._first_rows[(entry["shard"], entry["offset"])]
        chunks = range(min(frame_indices) // self.chunk_frames, max(frame_indices) // self.chunk_frames + 1)
        parts = []
        for chunk in chunks:
            table, row = self._row_groups.row(folder, first_row + chunk, fields)
            offset, first_frame, arrays = _chunk_of(table, row, fields, self.dtype)
            if offset != entry["offset"] or first_frame != chunk * self.chunk_frames:
                raise IOError(f"{folder}: row {first_row + chunk} holds video {offset} frame {first_frame}, the "
                              f"index says video {entry['offset']} frame {chunk * self.chunk_frames}")
            parts.append(arrays)
        at = np.asarray(frame_indices) - chunks[0] * self.chunk_frames
        return {field: (parts[0][field] if len(parts) == 1 else np.concatenate([part[field] for part in parts]))[at]
                for field in fields}

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
    """Decoded Parquet row groups, least recently used dropped first once `max_bytes` is exceeded, and
    the open files they come from (per thread: a ParquetFile is not shared between reading threads)."""

    def __init__(self, max_bytes):
        _prefer_jemalloc()
        self.max_bytes = max_bytes
        self.tables = collections.OrderedDict()
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

    def row(self, folder, row, fields):
        """(table, row within it) holding shard row `row`."""
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
            table = self.tables.get(key)
            if table is not None:
                self.tables.move_to_end(key)
        if table is None:  # read outside the lock, so parallel workers read different row groups at once
            table = self._file(folder).read_row_group(group, columns=["video", "start", "shape"] + list(fields))
            with self.lock:
                if key not in self.tables:
                    self.tables[key] = table
                    self.held_bytes += table.nbytes
                while len(self.tables) > 1 and self.held_bytes > self.max_bytes:
                    self.held_bytes -= self.tables.popitem(last=False)[1].nbytes
        return table, row - int(bounds[group])
