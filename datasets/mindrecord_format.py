"""MindRecord cache shards: one record per chunk of frames, arrays kept as bytes plus a shape.

MindRecord array fields cannot hold float16 and a record must fit in one page (at most 256 MB), so a
video is split into chunks of `chunk_frames` frames and the page size is chosen from the largest
chunk. The shard is a folder (`shard.mindrecord` + `.db`): MindRecord stores the file name inside
the file, so shards are made visible by renaming their folder, never the files.

    shard.mindrecord:  video (int32 offset in shard), start (int32 first frame), shape (int32[4]), <field> (bytes)
    extras.mindrecord: (only with per-video arrays or blobs) video (int32, -1 for a blob), name, dtype,
                       shape (int32[-1]), data (bytes)

Reading frames. MindRecord (file version 3.0, the only one MindSpore 2.10 reads) keeps a record's
bytes and array fields together in a blob page of the file, and the shard's sqlite index (`.db`, which
MindDataset reads too) says where each record's blob is. The Reader locates each chunk's fields once
per shard, checks them against the cache index (IOError naming the shard where they disagree), and
then reads a clip's frames with one pread per run of frames in a chunk: MindDataset cost about 0.3 ms
per record however small, several times a random frame's own read. The files stay MindRecord's own:
MindDataset reads them as before (the tests check it reads what the Reader reads).
"""
import contextlib
import json
import os
import sqlite3
import struct
import urllib.parse

import numpy as np
from mindspore.mindrecord import FileReader, FileWriter

from .formats import ChunkedShardReader, ChunkLayout, ShardWriter, extras_from_rows, extras_rows

FILE_NAME = "shard.mindrecord"
EXTRAS_NAME = "extras.mindrecord"
MIN_PAGE, MAX_PAGE = 1 << 15, 1 << 28  # MindRecord's limits: 32 KB to 256 MB
# The header reserves room for page metadata and is written sparse. MindRecord's default (16 MB) made
# each small shard a 16 MB file to hash; 4 MB still holds the metadata of tens of thousands of pages.
HEADER_SIZE = 1 << 22
LAYOUT_VERSION = "3.0"  # the MindRecord file version whose blob layout the direct reader knows
INDEX_COLUMNS = ("ROW_ID", "PAGE_ID_BLOB", "PAGE_OFFSET_BLOB", "PAGE_OFFSET_BLOB_END")
NARROWED_INTEGERS = ("<i1", "<i2", "<i4", "<i8")  # a compressed integer array's 2-bit type codes


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
    reader = FileReader(path, columns=columns)
    try:
        return list(reader.get_next())
    finally:
        reader.close()


def read_header(path):
    """The JSON header at the start of a MindRecord file (a little-endian uint64 length, then the text)."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if size is None or size > MAX_PAGE:
            raise IOError(f"{path}: not a MindRecord file (no header)")
        text = handle.read(size)
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise IOError(f"{path}: not a MindRecord file (its header is not JSON)")
    return header


def _index_database(path):
    """The shard's sqlite index, read-only; `immutable`: a committed shard never changes, so sqlite
    takes no locks and writes nothing beside it."""
    return contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(path + '.db')}?mode=ro&immutable=1",
                                              uri=True))


def direct_plan(path, frame_fields):
    """What reading a shard's frames directly needs from its header and sqlite index: {"header_size",
    "page_size", "blob_fields" (in blob order), "compressed" (the shape array), "video", "start" (their
    index columns)}; IOError naming the file for one that is not a shard of this layout."""
    header = read_header(path)
    if header.get("version") != LAYOUT_VERSION:
        raise IOError(f"{path}: MindRecord file version {header.get('version')!r}, not {LAYOUT_VERSION}")
    schemas = header.get("schema") or [{}]
    columns, blob_fields = schemas[0].get("schema", {}), list(schemas[0].get("blob_fields", []))
    expected = {"video": {"type": "int32"}, "start": {"type": "int32"}, "shape": {"type": "int32", "shape": [-1]},
                **{field: {"type": "bytes"} for field in frame_fields}}
    if len(schemas) != 1 or columns != expected or sorted(blob_fields) != sorted(("shape",) + tuple(frame_fields)):
        raise IOError(f"{path}: schema {columns} with blob fields {blob_fields}, not the cache's {expected}")
    index = {item.get("index_field"): f"{item.get('index_field')}_{item.get('schema_id')}"
             for item in header.get("index_fields", [])}
    try:
        with _index_database(path) as database:
            table = {row[1] for row in database.execute("PRAGMA table_info(INDEXES)")}
    except sqlite3.Error as err:
        raise IOError(f"{path}.db: not a readable MindRecord index ({err})") from None
    wanted = list(INDEX_COLUMNS) + [index.get("video"), index.get("start")]
    if not set(wanted) <= table:
        raise IOError(f"{path}.db: its index holds columns {sorted(table)}, not {wanted}")
    try:
        plan = {"header_size": int(header["header_size"]), "page_size": int(header["page_size"]),
                "compressed": header.get("compression_size", 0) != 0}
    except (KeyError, TypeError, ValueError):
        raise IOError(f"{path}: its header gives no header_size and page_size") from None
    return {**plan, "blob_fields": blob_fields, "video": index["video"], "start": index["start"]}


def decode_integers(data, compressed):
    """An int32 array field's values: raw little-endian, or MindRecord's compressed form (big-endian
    uint32 count, a 2-bit type code per value, then each value little-endian in that width)."""
    if not compressed:
        return np.frombuffer(data, "<i4").astype(np.int64) if len(data) % 4 == 0 else None
    if len(data) < 4:
        return None
    count = struct.unpack(">I", data[:4])[0]
    at = 4 + (count + 3) // 4
    if len(data) < at:
        return None
    values = []
    for i in range(count):
        code = (data[4 + i // 4] >> (2 * (3 - i % 4))) & 3
        width = 1 << code
        if at + width > len(data):
            return None
        values.append(int(np.frombuffer(data, NARROWED_INTEGERS[code], 1, at)[0]))
        at += width
    return np.array(values, np.int64) if at == len(data) else None


class Reader(ChunkedShardReader):
    def _file(self, shard):
        return os.path.join(self.shard_folder(shard), FILE_NAME)

    def _parse_layout(self, shard):
        """Each chunk row's blob, found through the sqlite index and walked field by field (a uint64
        little-endian blob length, then per field a big-endian uint64 length and the bytes), checked
        against the cache index: IOError naming the shard where they disagree."""
        path = self._file(shard)
        plan = direct_plan(path, self.frame_fields)
        query = (f"SELECT {', '.join(INDEX_COLUMNS)}, \"{plan['video']}\", \"{plan['start']}\" FROM INDEXES "
                 f"ORDER BY ROW_ID")
        try:
            with _index_database(path) as database:
                index = np.array(database.execute(query).fetchall(), np.int64).reshape(-1, 6)
        except (sqlite3.Error, OverflowError, ValueError) as err:
            raise IOError(f"{path}.db: cannot read its index ({err})") from None
        expected = self.expected_chunks(shard)
        if len(index) != len(expected) or (index[:, 0] != np.arange(len(index))).any() \
                or (index[:, 4:6] != expected[:, :2]).any():
            raise IOError(f"{path}: its {len(index)} records are not the {len(expected)} chunks of the cache "
                          f"index (video and first frame of each, in order)")
        column = {field: j for j, field in enumerate(self.frame_fields)}
        addresses = np.zeros((len(index), len(self.frame_fields)), np.int64)
        lengths = np.zeros_like(addresses)
        frame_shapes = set()
        descriptor = os.open(path, os.O_RDONLY)
        try:
            for row, (_, page, begin, end, _, _) in enumerate(index):
                start = plan["header_size"] + page * plan["page_size"] + begin
                stop = start + end - begin
                head = os.pread(descriptor, 8, start)
                at = start + 8
                if len(head) != 8 or struct.unpack("<Q", head)[0] != stop - at:
                    raise IOError(f"{path}: record {row}'s blob at byte {start} is not the {end - begin} bytes its "
                                  f"index gives")
                for name in plan["blob_fields"]:
                    size = os.pread(descriptor, 8, at)
                    length = struct.unpack(">Q", size)[0] if len(size) == 8 else stop
                    if at + 8 + length > stop:
                        raise IOError(f"{path}: record {row}'s field {name!r} runs past its blob")
                    if name == "shape":
                        shape = decode_integers(os.pread(descriptor, length, at + 8), plan["compressed"])
                        if shape is None or len(shape) != 4 or shape[0] != expected[row, 2]:
                            raise IOError(f"{path}: record {row} has chunk shape {shape}; the cache index "
                                          f"gives {expected[row, 2]} frames")
                        frame_shapes.add(tuple(int(n) for n in shape[1:]))
                    else:
                        addresses[row, column[name]], lengths[row, column[name]] = at + 8, length
                    at += 8 + length
                if at != stop:
                    raise IOError(f"{path}: record {row}'s blob holds {stop - at} bytes beyond its fields")
        finally:
            os.close(descriptor)
        if len(frame_shapes) != 1:
            raise IOError(f"{path}: its chunks hold frames of shapes {sorted(frame_shapes)}, not one shape")
        frame_shape = frame_shapes.pop()
        frame_bytes = int(np.prod(frame_shape)) * self.dtype.itemsize
        if (lengths != expected[:, 2:3] * frame_bytes).any():
            raise IOError(f"{path}: chunk fields of other sizes than their frames x {frame_shape} in "
                          f"{self.dtype} ({frame_bytes} bytes a frame)")
        return ChunkLayout(path, addresses, frame_shape, frame_bytes)

    def _read_video(self, entry, fields):
        if not entry["frames"]:
            return {field: np.zeros((0,), self.dtype) for field in fields}
        return self.read_direct([(entry, k) for k in range(entry["frames"])], fields)

    def read_frames(self, entry, frame_indices, fields=None):
        return self.read_direct([(entry, k) for k in frame_indices], fields)

    def read_single_frames(self, frames, fields=None):
        return self.read_direct(frames, fields)

    def _read_extras(self, folder):
        path = os.path.join(folder, EXTRAS_NAME)
        return extras_from_rows(_records(path)) if os.path.isfile(path) else ({}, {})
