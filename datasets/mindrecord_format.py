"""MindRecord cache shards: one record per chunk of frames, arrays kept as bytes plus a shape.

MindRecord array fields cannot hold float16 and a record must fit in one page (at most 256 MB), so a
video is split into chunks of `chunk_frames` frames and the page size is chosen from the largest
chunk. The shard is a folder (`shard.mindrecord` + `.db`): MindRecord stores the file name inside
the file, so shards are made visible by renaming their folder, never the files.

    shard.mindrecord:  video (int32 offset in shard), start (int32 first frame), shape (int32[4]), <field> (bytes)
    extras.mindrecord: (only with per-video arrays or blobs) video (int32, -1 for a blob), name, dtype,
                       shape (int32[-1]), data (bytes)
"""
import os

import numpy as np

from .formats import ShardReader, ShardWriter, chunk_rows, extras_from_rows, extras_rows

FILE_NAME = "shard.mindrecord"
EXTRAS_NAME = "extras.mindrecord"
MIN_PAGE, MAX_PAGE = 1 << 15, 1 << 28  # MindRecord's limits: 32 KB to 256 MB
# The header reserves room for page metadata and is written sparse. MindRecord's default (16 MB) made
# each small shard a 16 MB file to hash; 4 MB still holds the metadata of tens of thousands of pages.
HEADER_SIZE = 1 << 22


def page_size_for(record_bytes):
    """The smallest power-of-two page holding a record with room for its header."""
    needed = int(record_bytes * 1.25) + 4096
    if needed > MAX_PAGE:
        raise ValueError(f"a record of {record_bytes} bytes exceeds MindRecord's 256 MB page; lower chunk_frames")
    page = MIN_PAGE
    while page < needed:
        page *= 2
    return page


def _file_writer(path, schema, description, record_bytes):
    from mindspore.mindrecord import FileWriter
    writer = FileWriter(path, shard_num=1, overwrite=False)
    writer.add_schema(schema, description)
    writer.set_header_size(HEADER_SIZE)
    writer.set_page_size(page_size_for(record_bytes))
    return writer


class Writer(ShardWriter):
    """Streams chunk records into the shard; `frame_nbytes` (bytes of one frame over all fields) sets
    the page size before anything is written, as MindRecord requires."""

    def _open(self):
        schema = {"video": {"type": "int32"}, "start": {"type": "int32"}, "shape": {"type": "int32", "shape": [-1]}}
        schema.update({field: {"type": "bytes"} for field in self.frame_fields})
        self.writer = _file_writer(os.path.join(self.staging, FILE_NAME), schema, "latte latent cache",
                                   self.chunk_frames * self.frame_nbytes)

    def _add_frames(self, offset, frames):
        records = []
        for start in range(0, len(frames[self.frame_fields[0]]), self.chunk_frames):
            record = {"video": offset, "start": start}
            for field in self.frame_fields:
                chunk = np.ascontiguousarray(frames[field][start:start + self.chunk_frames])
                record["shape"] = np.array(chunk.shape, np.int32)
                record[field] = chunk.tobytes()
            records.append(record)
        self.writer.write_raw_data(records)

    def _finish(self, video_arrays, blobs):
        self._close_writer()
        rows = extras_rows(video_arrays, blobs)
        if rows:
            schema = {"video": {"type": "int32"}, "name": {"type": "string"}, "dtype": {"type": "string"},
                      "shape": {"type": "int32", "shape": [-1]}, "data": {"type": "bytes"}}
            extras = _file_writer(os.path.join(self.staging, EXTRAS_NAME), schema, "latte cache extras",
                                  max(len(row["data"]) for row in rows))
            extras.write_raw_data([{**row, "shape": np.array(row["shape"], np.int32)} for row in rows])
            extras.commit()

    def _close(self, writer):
        writer.commit()  # MindRecord has no abort: after a failure this only closes the file


def _records(path, columns=None):
    from mindspore.mindrecord import FileReader
    reader = FileReader(path, columns=columns)
    try:
        return list(reader.get_next())
    finally:
        reader.close()


class Reader(ShardReader):
    random_access = False

    def __init__(self, shards_dir, entries, **settings):
        super().__init__(shards_dir, entries, **settings)
        self._first_rows, self._shard_rows = chunk_rows(self.entries, self.chunk_frames)

    def _read_video(self, entry, fields):
        """All chunks of one video, reassembled in frame order."""
        items = _records(os.path.join(self.shard_folder(entry["shard"]), FILE_NAME))
        chunks = sorted((item["start"], item) for item in items if item["video"] == entry["offset"])
        out = {}
        for field in fields:
            parts = [np.frombuffer(item[field], dtype=self.dtype).reshape(item["shape"]) for _, item in chunks]
            out[field] = np.concatenate(parts) if parts else np.zeros((0,), self.dtype)
        return out

    def read_frames(self, entry, frame_indices, fields=None):
        return next(self.stream_frames([(entry, np.asarray(frame_indices))], 1, fields))

    def _read_extras(self, folder):
        path = os.path.join(folder, EXTRAS_NAME)
        return extras_from_rows(_records(path)) if os.path.isfile(path) else ({}, {})

    def stream_frames(self, requests, num_parallel_workers=1, fields=None):
        """MindDataset reads exactly the chunk rows each request needs, in order (SubsetSampler), and
        they are reassembled here, so the shards are never read whole."""
        import mindspore.dataset as ds
        requests = list(requests)
        if not requests:
            return
        fields = list(fields or self.frame_fields)
        shards = sorted({entry["shard"] for entry, _ in requests})
        files = [os.path.join(self.shard_folder(shard), FILE_NAME) for shard in shards]
        base = dict(zip(shards, np.cumsum([0] + [self._shard_rows[shard] for shard in shards[:-1]])))
        first_chunk = [indices.min() // self.chunk_frames for _, indices in requests]
        last_chunk = [indices.max() // self.chunk_frames for _, indices in requests]
        per_request = int(max(last - first for first, last in zip(first_chunk, last_chunk))) + 1
        rows = np.empty((len(requests), per_request), np.int64)
        for i, (entry, _) in enumerate(requests):
            chunk = np.minimum(first_chunk[i] + np.arange(per_request), last_chunk[i])  # pad by repeating the last
            rows[i] = base[entry["shard"]] + self._first_rows[(entry["shard"], entry["offset"])] + chunk
        # MindDataset refuses a SubsetSampler longer than the files' row count, and requests share rows:
        # the rows are read in segments of whole requests, each at most that long.
        total_rows = sum(self._shard_rows[shard] for shard in shards)
        per_segment = max(1, total_rows // per_request)
        for first in range(0, len(requests), per_segment):
            segment = rows[first:first + per_segment]
            records = ds.MindDataset(files, columns_list=["video", "start", "shape"] + fields,
                                     sampler=ds.SubsetSampler(segment.reshape(-1).tolist()),
                                     num_parallel_workers=num_parallel_workers)
            group, done = [], first
            for record in records.create_tuple_iterator(num_epochs=1, output_numpy=True):
                group.append(record)
                if len(group) == per_request:
                    yield self._assemble(group, fields, *requests[done])
                    group, done = [], done + 1

    def _assemble(self, group, fields, entry, frame_indices):
        chunks = {}
        for record in group:
            offset, first_frame, shape = int(record[0]), int(record[1]), tuple(record[2])
            if offset != entry["offset"]:
                raise IOError(f"{self.shard_folder(entry['shard'])}: a record of video {offset} where the index "
                              f"places video {entry['offset']}")
            chunks[first_frame] = {f: record[3 + i].view(np.uint8).view(self.dtype).reshape(shape)  # no copy
                                   for i, f in enumerate(fields)}
        at, starts = frame_indices - min(chunks), sorted(chunks)
        return {f: (chunks[starts[0]][f] if len(starts) == 1 else np.concatenate([chunks[k][f] for k in starts]))[at]
                for f in fields}
