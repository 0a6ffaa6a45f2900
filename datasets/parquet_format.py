"""Parquet cache shards: one row per chunk of frames, readable by pyarrow, pandas and dask.

    <shard>/shard.parquet, columns: video (int32 offset), start (int32), frames (int32),
    shape (list<int32>), <field> (binary: the chunk's array in the cache dtype)

Row groups are sized to about `ROW_GROUP_BYTES` so readers can fetch parts of a shard.
"""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FILE_NAME = "shard.parquet"
ROW_GROUP_BYTES = 96 << 20  # within the 64-128 MB that columnar readers handle well


class ShardWriter:
    def __init__(self, folder, *, fields, chunk_frames, frame_nbytes):
        self.path = os.path.join(folder, FILE_NAME)
        self.fields = fields
        self.chunk_frames = chunk_frames
        self.schema = pa.schema([("video", pa.int32()), ("start", pa.int32()), ("frames", pa.int32()),
                                 ("shape", pa.list_(pa.int32()))] + [(f, pa.binary()) for f in fields])
        # plain and uncompressed: float16 latents barely compress, and readers then map the file
        # instead of decoding into buffers (which, freed, stayed in the process: 1.3 GB RSS over a
        # 0.5 GB cache)
        self.writer = pq.ParquetWriter(self.path, self.schema, compression="none", use_dictionary=False)
        self.rows, self.buffered_bytes = [], 0
        self.count = 0

    def add(self, arrays):
        frames = len(arrays[self.fields[0]])
        for start in range(0, frames, self.chunk_frames):
            row = {"video": self.count, "start": start}
            for field in self.fields:
                chunk = np.ascontiguousarray(arrays[field][start:start + self.chunk_frames])
                row.update(frames=len(chunk), shape=list(chunk.shape))
                row[field] = chunk.tobytes()
                self.buffered_bytes += chunk.nbytes
            self.rows.append(row)
            if self.buffered_bytes >= ROW_GROUP_BYTES:
                self._flush()
        self.count += 1
        return self.count - 1

    def _flush(self):
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows, self.buffered_bytes = [], 0

    def close(self):
        self._flush()
        self.writer.close()


def row_group_bounds(folder):
    """First row of every row group, and the total row count as the last entry."""
    metadata = pq.ParquetFile(os.path.join(folder, FILE_NAME)).metadata
    return np.cumsum([0] + [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])


def read_row_group(folder, group, fields):
    """One row group as a pyarrow Table with `video`, `start`, `shape` and the fields' chunk bytes."""
    return pq.ParquetFile(os.path.join(folder, FILE_NAME), memory_map=True).read_row_group(
        group, columns=["video", "start", "shape"] + list(fields))


def chunk_of(table, row, fields, dtype):
    """(video offset, first frame, {field: array}) of one row of a row group, without copying the bytes."""
    shape = table.column("shape")[row].as_py()
    arrays = {field: np.frombuffer(table.column(field)[row].as_buffer(), dtype=dtype).reshape(shape)
              for field in fields}
    return table.column("video")[row].as_py(), table.column("start")[row].as_py(), arrays


def read_video(folder, offset, fields, dtype, frames):
    table = pq.read_table(os.path.join(folder, FILE_NAME), filters=[("video", "=", offset)],
                          columns=["start", "shape"] + list(fields))
    rows = sorted(table.to_pylist(), key=lambda row: row["start"])
    out = {}
    for field in fields:
        parts = [np.frombuffer(row[field], dtype=dtype).reshape(row["shape"]) for row in rows]
        out[field] = np.concatenate(parts) if parts else np.zeros((0,), dtype)
        if len(out[field]) != frames:
            raise IOError(f"{folder}: video {offset} has {len(out[field])} frames in the shard, the index says {frames}")
    return out
