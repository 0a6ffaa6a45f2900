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
                (entries[2], np.array([2, 5, 8, 11])), (entries[2], np.array([12, 0])), (entries[0], [8, 8])]
    streamed_requests = [(entry, np.asarray(frames)) for entry, frames in requests]
    for (entry, frames), streamed in zip(requests, reader.stream_frames(streamed_requests, 1)):
        single = reader.read_frames(entry, frames)
        for field in FIELDS:
            expected = videos[entry["offset"]][field][frames]
            np.testing.assert_array_equal(single[field], expected)
            np.testing.assert_array_equal(streamed[field], expected)
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
