"""Round trips of every registered cache format through the one Writer / Reader interface."""
import os

import numpy as np
import pytest

from latte_toolkit.datasets.formats import FORMAT_NAMES, get_format

FIELDS = ("mean", "std")
CHUNK = 4


def _video(seed, frames):
    rng = np.random.default_rng(seed)
    return {field: rng.standard_normal((frames, 4, 3, 5)).astype(np.float16) for field in FIELDS}


def _open_files_under(folder):
    """Paths under `folder` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def _write(fmt, shard, videos, embeddings=None, blobs=None):
    module = get_format(fmt)
    frame_nbytes = len(FIELDS) * 4 * 3 * 5 * 2
    video_fields = ("caption_embedding",) if embeddings else ()
    with module.Writer(shard, frame_fields=FIELDS, chunk_frames=CHUNK, frame_nbytes=frame_nbytes,
                       video_fields=video_fields) as writer:
        for i, video in enumerate(videos):
            arrays = {"caption_embedding": embeddings[i]} if embeddings else None
            writer.add(video, label=i if i % 2 else None, caption=f"video {i}", arrays=arrays)
        for name, array in (blobs or {}).items():
            writer.add_blob(name, array)
    return writer


def _reader(fmt, shard, writer):
    entries = [{"shard": os.path.basename(shard), **video} for video in writer.videos]
    reader = get_format(fmt).Reader(os.path.dirname(shard), entries, frame_fields=FIELDS, dtype="float16",
                                    chunk_frames=CHUNK)
    return reader, entries


def test_the_registry_imports_no_format_until_asked():
    import subprocess
    import sys
    code = ("import sys; from latte_toolkit.datasets.formats import FORMAT_NAMES; "
            "print(FORMAT_NAMES, any(m.startswith(('pyarrow', 'mindspore')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "('numpy', 'mindrecord', 'parquet') False"
    with pytest.raises(ValueError, match="unknown format 'hdf5'; choose one of numpy, mindrecord, parquet"):
        get_format("hdf5")


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_every_kind_of_field_round_trips(tmp_path, fmt):
    videos = [_video(i, frames) for i, frames in enumerate((9, 4, 13))]  # 3, 1 and 4 chunks
    rng = np.random.default_rng(7)
    embeddings = [rng.standard_normal((77, 16)).astype(np.float32) for _ in videos]
    empty_prompt = rng.standard_normal((77, 16)).astype(np.float16)
    shard = tmp_path / "shards" / "s-0"
    writer = _write(fmt, shard, videos, embeddings, {"empty_prompt_embedding": empty_prompt})
    assert writer.closed and sorted(os.listdir(tmp_path / "shards")) == ["s-0"]
    assert [(v["offset"], v["frames"], v["label"], v["caption"]) for v in writer.videos] == [
        (0, 9, None, "video 0"), (1, 4, 1, "video 1"), (2, 13, None, "video 2")]
    reader, entries = _reader(fmt, shard, writer)
    for entry, video, embedding in zip(entries, videos, embeddings):
        stored = reader.read(entry)
        assert sorted(stored) == ["caption", "caption_embedding", "label", "mean", "std"]
        for field in FIELDS:
            np.testing.assert_array_equal(np.asarray(stored[field]), video[field])
        np.testing.assert_array_equal(stored["caption_embedding"], embedding)
        assert stored["caption_embedding"].dtype == np.float32
        assert (stored["label"], stored["caption"]) == (entry["label"], entry["caption"])
    np.testing.assert_array_equal(reader.blob("s-0", "empty_prompt_embedding"), empty_prompt)
    with pytest.raises(KeyError, match="no blob 'other'"):
        reader.blob("s-0", "other")


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_single_frames_and_clips_read_from_any_video(tmp_path, fmt):
    videos = [_video(i, frames) for i, frames in enumerate((9, 4, 13))]
    shard = tmp_path / "shards" / "s-0"
    reader, entries = _reader(fmt, shard, _write(fmt, shard, videos))
    assert reader.video_arrays(entries[0]) == {}
    requests = [(entries[2], np.array([12])), (entries[0], np.array([3])), (entries[1], np.array([0, 1, 2, 3])),
                (entries[2], np.array([2, 5, 8, 11])), (entries[2], np.array([12, 0])), (entries[0], [8, 8]),
                (entries[2], np.arange(2, 11))]  # across chunk boundaries
    for entry, frames in requests:
        read = reader.read_frames(entry, frames)
        for field in FIELDS:
            np.testing.assert_array_equal(read[field], videos[entry["offset"]][field][frames])
    images = [(entries[2], 12), (entries[0], 0), (entries[2], 3), (entries[2], 4), (entries[1], 3)]
    singles = reader.read_single_frames(images)
    for field in FIELDS:
        np.testing.assert_array_equal(singles[field], np.stack([videos[e["offset"]][field][k] for e, k in images]))
    only_mean = reader.read_frames(entries[2], np.array([7]), fields=("mean",))
    assert list(only_mean) == ["mean"] and only_mean["mean"].shape == (1, 4, 3, 5)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_a_shard_without_extras_has_only_its_frame_files(tmp_path, fmt):
    shard = tmp_path / "shards" / "s-0"
    _write(fmt, shard, [_video(0, 5)])
    expected = {"numpy": ["0.mean.npy", "0.std.npy"], "mindrecord": ["shard.mindrecord", "shard.mindrecord.db"],
                "parquet": ["shard.parquet"]}[fmt]
    assert sorted(os.listdir(shard)) == expected


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_a_writer_that_raises_mid_shard_leaves_nothing_and_is_closed(tmp_path, fmt):
    shards = tmp_path / "shards"
    shards.mkdir()
    writer = None
    with pytest.raises(RuntimeError, match="decoder died"):
        with get_format(fmt).Writer(shards / "s-0", frame_fields=FIELDS, chunk_frames=CHUNK,
                                    frame_nbytes=240) as writer:
            writer.add(_video(0, 9))
            raise RuntimeError("decoder died")
    assert writer.closed and os.listdir(shards) == [] and _open_files_under(shards) == []
    with pytest.raises(ValueError, match="needs frame fields"):  # a wrong field list raises inside the writer
        with get_format(fmt).Writer(shards / "s-1", frame_fields=FIELDS, chunk_frames=CHUNK,
                                    frame_nbytes=240) as writer:
            writer.add({"mean": _video(0, 9)["mean"]})
    assert os.listdir(shards) == [] and _open_files_under(shards) == []


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_a_shard_rewritten_after_a_kill_replaces_the_old_one(tmp_path, fmt):
    shard = tmp_path / "shards" / "s-0"
    _write(fmt, shard, [_video(0, 5)])
    writer = _write(fmt, shard, [_video(1, 6)])
    reader, entries = _reader(fmt, shard, writer)
    np.testing.assert_array_equal(np.asarray(reader.read(entries[0])["std"]), _video(1, 6)["std"])
    assert os.listdir(tmp_path / "shards") == ["s-0"]


def test_numpy_frame_reads_check_the_file_against_the_index(tmp_path):
    """read_frames parses each .npy header once, then preads: a file that disagrees with the index, or
    ends before the frames asked for, is an IOError naming it, never other bytes."""
    shard = tmp_path / "shards" / "s-0"
    reader, entries = _reader("numpy", shard, _write("numpy", shard, [_video(0, 9), _video(1, 4)]))
    np.testing.assert_array_equal(reader.read_frames(entries[0], [8])["std"], _video(0, 9)["std"][[8]])
    path = shard / "0.std.npy"
    path.write_bytes(path.read_bytes()[:-100])  # cut after its header was parsed: the pread comes up short
    with pytest.raises(IOError, match="0.std.npy.*truncated"):
        reader.read_frames(entries[0], [8])
    np.save(shard / "1.mean.npy", _video(1, 5)["mean"])  # 5 frames where the index says 4
    with pytest.raises(IOError, match="1.mean.npy: holds float16 \\(5, 4, 3, 5\\), the index says float16 x 4"):
        reader.read_frames(entries[1], [0])
    with pytest.raises(IndexError, match="frames 2..4 of a video of 4 frames"):
        reader.read_frames(entries[1], [2, 4])


def test_parquet_chunk_rows_are_row_groups_and_larger_row_groups_read_the_same(tmp_path):
    """A random frame decodes one chunk row (its own row group); a shard written with all its rows in
    one row group (the earlier layout) gives the same frames."""
    import pyarrow.parquet as pq
    videos = [_video(i, frames) for i, frames in enumerate((9, 4, 13))]
    shard = tmp_path / "shards" / "s-0"
    _, entries = _reader("parquet", shard, _write("parquet", shard, videos))
    metadata = pq.ParquetFile(shard / "shard.parquet").metadata
    assert metadata.num_row_groups == 3 + 1 + 4 and {metadata.row_group(g).num_rows for g in range(8)} == {1}
    requests = [(entries[2], np.array([12, 3])), (entries[1], np.array([2])), (entries[0], np.array([0, 1, 8]))]
    pq.write_table(pq.read_table(shard / "shard.parquet"), tmp_path / "one_group.parquet", row_group_size=1 << 20)
    os.replace(tmp_path / "one_group.parquet", shard / "shard.parquet")
    assert pq.ParquetFile(shard / "shard.parquet").metadata.num_row_groups == 1
    old_layout = get_format("parquet").Reader(tmp_path / "shards", entries, frame_fields=FIELDS, dtype="float16",
                                             chunk_frames=CHUNK)
    for entry, frames in requests:
        for field in FIELDS:
            np.testing.assert_array_equal(old_layout.read_frames(entry, frames)[field],
                                          videos[entry["offset"]][field][frames])


def _minddataset_records(shard, fields):
    """Every record of a MindRecord shard as MindSpore's own MindDataset reads it:
    {(video, first frame): {field: (frames, C, h, w) bytes}}."""
    import mindspore.dataset as ds
    records = ds.MindDataset(str(shard / "shard.mindrecord"), columns_list=["video", "start", "shape", *fields],
                             shuffle=False)
    return {(int(video), int(start)): {f: (tuple(shape), bytes(data)) for f, data in zip(fields, arrays)}
            for video, start, shape, *arrays in records.create_tuple_iterator(num_epochs=1, output_numpy=True)}


# frame shapes whose values MindRecord's compressed shape array narrows to int8, int16 and int32
@pytest.mark.parametrize("dtype, frame_shape, fields", [("float16", (4, 3, 5), ("mean", "std")),
                                                        ("float32", (2, 1, 300), ("sample",)),
                                                        ("float16", (1, 1, 40000), ("mean", "std"))])
def test_mindrecord_frames_read_from_the_blob_pages_are_what_minddataset_reads(tmp_path, dtype, frame_shape, fields):
    """The Reader reads frames straight from the shard's blob pages (found through its sqlite index);
    every chunk of every video must be exactly the bytes MindDataset gives for that record."""
    module = get_format("mindrecord")
    rng = np.random.default_rng(3)
    videos = [{f: rng.standard_normal((frames,) + frame_shape).astype(dtype) for f in fields} for frames in (9, 4, 13, 1)]
    shard = tmp_path / "shards" / "s-0"
    frame_bytes = int(np.prod(frame_shape)) * np.dtype(dtype).itemsize
    with module.Writer(shard, frame_fields=fields, chunk_frames=CHUNK, frame_nbytes=len(fields) * frame_bytes) as writer:
        for video in videos:
            writer.add(video)
    entries = [{"shard": "s-0", **video} for video in writer.videos]
    reader = module.Reader(tmp_path / "shards", entries, frame_fields=fields, dtype=dtype, chunk_frames=CHUNK)
    records = _minddataset_records(shard, fields)
    assert sorted(records) == [(v, start) for v, n in enumerate((9, 4, 13, 1)) for start in range(0, n, CHUNK)]
    for (offset, start), arrays in records.items():
        frames = np.arange(start, min(start + CHUNK, entries[offset]["frames"]))
        read = reader.read_frames(entries[offset], frames)
        for field in fields:
            shape, data = arrays[field]
            assert read[field].shape == shape and read[field].tobytes() == data
            np.testing.assert_array_equal(read[field], videos[offset][field][frames])
    for entry, video in zip(entries, videos):
        whole = reader.read(entry)
        for field in fields:
            np.testing.assert_array_equal(whole[field], video[field])


def test_mindrecord_compressed_integer_arrays_decode():
    """MindRecord's compressed int32/int64 arrays: big-endian count, 2-bit width codes, little-endian values."""
    from latte_toolkit.datasets.mindrecord_format import decode_integers
    values = [3, -2, 300, 70000, 1 << 40]
    widths = [0, 0, 1, 2, 3]  # int8, int8, int16, int32, int64
    data = (len(values)).to_bytes(4, "big") + bytes([0 << 6 | 0 << 4 | 1 << 2 | 2, 3 << 6])
    data += b"".join(v.to_bytes(1 << w, "little", signed=True) for v, w in zip(values, widths))
    assert decode_integers(data, compressed=True).tolist() == values
    assert decode_integers(data[:-1], compressed=True) is None  # a value cut short
    assert decode_integers(np.array([16, 4, 32, 32], "<i4").tobytes(), compressed=False).tolist() == [16, 4, 32, 32]


def test_mindrecord_frame_reads_check_the_shard_against_the_index(tmp_path):
    """A shard whose records disagree with the cache index, a truncated shard or a missing sqlite index is
    an IOError naming the file, never other bytes."""
    import shutil
    videos = [_video(0, 9), _video(1, 4)]
    shard = tmp_path / "shards" / "s-0"
    writer = _write("mindrecord", shard, videos)
    shutil.copytree(shard, tmp_path / "pristine")
    reader, entries = _reader("mindrecord", shard, writer)
    with pytest.raises(IndexError, match="frame 4 of a video of 4 frames"):
        reader.read_frames(entries[1], [4])
    wrong = [entries[0], {**entries[1], "frames": 5}]  # two chunks where the shard has one
    with pytest.raises(IOError, match="shard.mindrecord: its 4 records are not the 5 chunks of the cache index"):
        get_format("mindrecord").Reader(tmp_path / "shards", wrong, frame_fields=FIELDS, dtype="float16",
                                        chunk_frames=CHUNK).read_frames(wrong[1], [0])
    with pytest.raises(IOError, match="chunk fields of other sizes"):  # float32 frames of the same byte count
        get_format("mindrecord").Reader(tmp_path / "shards", entries, frame_fields=FIELDS, dtype="float32",
                                        chunk_frames=CHUNK).read_frames(entries[0], [0])
    from latte_toolkit.datasets.mindrecord_format import HEADER_SIZE
    with open(shard / "shard.mindrecord", "r+b") as handle:
        handle.truncate(HEADER_SIZE + 1500)  # within the second record (about 1 KB each) of the blob page
    fresh, _ = _reader("mindrecord", shard, writer)
    with pytest.raises(IOError, match="shard.mindrecord: record 1's"):
        fresh.read_frames(entries[1], [0])
    os.remove(shard / "shard.mindrecord.db")
    with pytest.raises(IOError, match="shard.mindrecord.db"):
        _reader("mindrecord", shard, writer)[0].read_frames(entries[0], [0])
    shutil.rmtree(shard)
    shutil.copytree(tmp_path / "pristine", shard)
    np.testing.assert_array_equal(_reader("mindrecord", shard, writer)[0].read_frames(entries[1], [3])["std"],
                                  videos[1]["std"][[3]])


def test_parquet_frames_are_read_from_their_values_and_other_layouts_through_pyarrow(tmp_path):
    """Frames are preads of the PLAIN values the footer locates; a compressed shard (as another writer
    may leave) reads the same through pyarrow; a length prefix or chunk row that disagrees with the
    cache index is an IOError naming the file."""
    import pyarrow.parquet as pq
    videos = [_video(i, frames) for i, frames in enumerate((9, 4, 13))]
    shard = tmp_path / "shards" / "s-0"
    reader, entries = _reader("parquet", shard, _write("parquet", shard, videos))

    def reopened(index_rows=entries):
        return get_format("parquet").Reader(tmp_path / "shards", index_rows, frame_fields=FIELDS, dtype="float16",
                                            chunk_frames=CHUNK)

    table = pq.read_table(shard / "shard.parquet")
    layout = reader.layout("s-0")
    assert layout is not None and layout.frame_shape == (4, 3, 5) and layout.addresses.shape == (8, 2)
    for row in table.to_pylist():  # pyarrow's decoding of each chunk row is what the direct reads give
        frames = np.arange(row["start"], row["start"] + row["frames"])
        read = reader.read_frames(entries[row["video"]], frames)
        for field in FIELDS:
            assert read[field].tobytes() == row[field]
    requests = [(entries[2], np.arange(2, 11)), (entries[1], np.array([3, 0]))]
    images = [(entries[2], 12), (entries[0], 1), (entries[0], 2)]
    pq.write_table(table, tmp_path / "zstd.parquet", compression="zstd", row_group_size=1)
    os.replace(tmp_path / "zstd.parquet", shard / "shard.parquet")
    compressed = reopened()
    assert compressed.layout("s-0") is None
    for entry, frames in requests:
        for field in FIELDS:
            np.testing.assert_array_equal(compressed.read_frames(entry, frames)[field],
                                          videos[entry["offset"]][field][frames])
    singles = compressed.read_single_frames(images)
    np.testing.assert_array_equal(singles["std"], np.stack([videos[e["offset"]]["std"][k] for e, k in images]))
    wrong = [entries[0], {**entries[1], "frames": 5}, entries[2]]  # one chunk more than the shard holds
    with pytest.raises(IOError, match="shard.parquet: its 8 chunk rows are not the 9 chunks of the cache index"):
        reopened(wrong).read_frames(wrong[0], [0])
    _write("parquet", shard, videos)
    address = int(reopened().layout("s-0").addresses[5, 1])
    with open(shard / "shard.parquet", "r+b") as handle:  # the length prefix of row 5's std
        handle.seek(address - 4)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(IOError, match="shard.parquet: row 5's 'std' is not the 480 bytes of its 4 frames"):
        reopened().read_frames(entries[2], [0])
