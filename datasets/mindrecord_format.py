"""MindRecord cache shards: one record per chunk of frames, arrays kept as bytes plus a shape.

MindRecord array fields cannot hold float16 and a record must fit in one page (at most 256 MB), so a
video is split into chunks of `chunk_frames` frames and the page size is chosen from the largest
chunk. The shard is a folder (`shard.mindrecord` + `.db`): MindRecord stores the file name inside
the file, so shards are made visible by renaming their folder, never the files.

    record: video (int32 offset in shard), start (int32 first frame), shape (int32[4]), <field> (bytes)
"""
import os

import numpy as np

FILE_NAME = "shard.mindrecord"
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


class ShardWriter:
    """Streams chunk records into the shard; `frame_nbytes` (bytes of one frame over all fields) sets
    the page size before anything is written, as MindRecord requires."""

    def __init__(self, folder, *, fields, chunk_frames, frame_nbytes):
        from mindspore.mindrecord import FileWriter
        self.fields = fields
        self.chunk_frames = chunk_frames
        schema = {"video": {"type": "int32"}, "start": {"type": "int32"}, "shape": {"type": "int32", "shape": [-1]}}
        schema.update({field: {"type": "bytes"} for field in fields})
        self.writer = FileWriter(os.path.join(folder, FILE_NAME), shard_num=1, overwrite=False)
        self.writer.add_schema(schema, "latte latent cache")
        self.writer.set_header_size(HEADER_SIZE)
        self.writer.set_page_size(page_size_for(chunk_frames * frame_nbytes))
        self.count = 0

    def add(self, arrays):
        frames = len(arrays[self.fields[0]])
        records = []
        for start in range(0, frames, self.chunk_frames):
            record = {"video": self.count, "start": start}
            for field in self.fields:
                chunk = np.ascontiguousarray(arrays[field][start:start + self.chunk_frames])
                record["shape"] = np.array(chunk.shape, np.int32)
                record[field] = chunk.tobytes()
            records.append(record)
        self.writer.write_raw_data(records)
        self.count += 1
        return self.count - 1

    def close(self):
        self.writer.commit()


def read_video(folder, offset, fields, dtype, frames):
    """All chunks of one video, reassembled in frame order."""
    from mindspore.mindrecord import FileReader
    reader = FileReader(os.path.join(folder, FILE_NAME))
    try:
        chunks = sorted((item["start"], item) for item in reader.get_next() if item["video"] == offset)
    finally:
        reader.close()
    out = {}
    for field in fields:
        parts = [np.frombuffer(item[field], dtype=dtype).reshape(item["shape"]) for _, item in chunks]
        out[field] = np.concatenate(parts) if parts else np.zeros((0,), dtype)
        if len(out[field]) != frames:
            raise IOError(f"{folder}: video {offset} has {len(out[field])} frames in the shard, the index says {frames}")
    return out
