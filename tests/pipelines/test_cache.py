import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.datasets.video import center_crop_resize
from latte_toolkit.pipelines.cache import CacheError, DiskFull, run_cache
from latte_toolkit.cli import main
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.pipelines.report import cache_report

from media import holders, moving_square_frames, unmount, write_frame_folder, write_mp4, write_vae_folder

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("cache_src")
    for i in range(5):
        write_mp4(root / "src" / f"clip_{i}.mp4", moving_square_frames(9 + 3 * i, height=40, width=56, seed=i))
    write_frame_folder(root / "src" / "sky" / "v0", moving_square_frames(7, seed=9), ext="png")
    # usable for the metadata-only ingest, but frame 4 does not decode: the cache must skip it
    write_frame_folder(root / "src" / "sky" / "broken", moving_square_frames(8, seed=10))
    (root / "src" / "sky" / "broken" / "f_4.jpg").write_bytes(b"\xff\xd8 broken")
    run_ingest([root / "src"], root / "ingest", workers=0, progress=False)
    return {"manifest": root / "ingest", "vae": fixtures_dir / "vae" / "vae_small_diffusers", "root": root}


def _cache(ingested, out, **kwargs):
    options = dict(fmt="numpy", image_size=32, workers=0, shard_videos=2, chunk_frames=4, micro_batch=4,
                   progress=False)
    options.update(kwargs)
    return run_cache(ingested["manifest"], ingested["vae"], out, **options)


def _assert_same_cache(first, second):
    a, b = open_cache(first), open_cache(second)
    assert a.ids == b.ids
    for video_id in a.ids:
        x, y = a.read(video_id), b.read(video_id)
        for field in a.fields:
            np.testing.assert_array_equal(np.asarray(x[field]), np.asarray(y[field]))


@pytest.fixture(scope="module")
def numpy_cache(ingested, tmp_path_factory):
    out = tmp_path_factory.mktemp("caches") / "numpy"
    summary = _cache(ingested, out)
    return out, summary


def test_cache_holds_the_vae_posterior_of_the_cropped_frames(ingested, numpy_cache):
    out, summary = numpy_cache
    assert summary["videos"] == 6 and summary["failed"] == 1
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    assert [row["video_id"] for row in failures] == ["sky/broken"]
    assert "f_4.jpg" in failures[0]["message"]
    cache = open_cache(out)
    assert cache.ids == ["clip_0.mp4", "clip_1.mp4", "clip_2.mp4", "clip_3.mp4", "clip_4.mp4", "sky/v0"]
    video = cache.read("clip_2.mp4")
    assert video["mean"].shape == (15, 4, 8, 8) and video["mean"].dtype == np.float16
    # the same frames through the VAE directly
    import decord
    from latte_core import AutoencoderKL
    frames = decord.VideoReader(str(ingested["root"] / "src" / "clip_2.mp4")).get_batch(list(range(15))).asnumpy()
    pixels = np.stack([center_crop_resize(f, 32) for f in frames]).astype(np.float32) / 127.5 - 1
    mean, std = AutoencoderKL.from_pretrained(ingested["vae"]).encode_video(pixels.transpose(0, 3, 1, 2)[None])
    np.testing.assert_allclose(video["mean"].astype(np.float32), mean[0], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(video["std"].astype(np.float32), std[0], rtol=2e-3, atol=2e-3)
    info = json.loads((out / "cache.json").read_text())
    assert info["image_size"] == 32 and info["scaling_factor"] == pytest.approx(0.18215) and len(info["vae_sha256"]) == 64


@pytest.mark.parametrize("fmt", FORMAT_NAMES[1:])  # against the numpy cache
def test_formats_hold_identical_content(ingested, numpy_cache, tmp_path, fmt):
    _cache(ingested, tmp_path / fmt, fmt=fmt)
    _assert_same_cache(numpy_cache[0], tmp_path / fmt)
    if fmt == "parquet":  # pyarrow, pandas and dask read the shards as they are
        import dask.dataframe
        import pandas
        shards = sorted(str(path / "shard.parquet") for path in (tmp_path / fmt / "shards").iterdir())
        frames = pandas.read_parquet(shards[0])
        assert list(frames.columns) == ["video", "start", "frames", "shape", "mean", "std"]
        table = dask.dataframe.read_parquet(shards).compute()
        assert table["frames"].sum() == sum(len(open_cache(tmp_path / fmt).read(v)["mean"])
                                            for v in open_cache(tmp_path / fmt).ids)
        row = frames.iloc[0]
        chunk = np.frombuffer(row["mean"], np.float16).reshape(list(row["shape"]))
        assert chunk.shape[0] == row["frames"] <= 4


def test_sample_store_is_reproducible(ingested, tmp_path):
    _cache(ingested, tmp_path / "a", store="sample", dtype="float32", fmt="mindrecord")
    _cache(ingested, tmp_path / "b", store="sample", dtype="float32", fmt="mindrecord")
    _assert_same_cache(tmp_path / "a", tmp_path / "b")
    sample = open_cache(tmp_path / "a").read("clip_0.mp4")
    assert set(sample) == {"sample", "label", "caption"} and sample["sample"].dtype == np.float32


def test_a_folder_with_another_fingerprint_is_refused(ingested, numpy_cache):
    out, _ = numpy_cache
    with pytest.raises(CacheError, match="image_size differ"):
        _cache(ingested, out, image_size=64)
    result = CliRunner().invoke(main, ["cache", "--manifest", str(ingested["manifest"]), "--vae", str(ingested["vae"]),
                                       "--cache_folder", str(out), "--cache_file_type", "parquet", "--image-size", "32",
                                       "--workers", "0", "--shard-videos", "2", "--chunk-frames", "4"])
    assert result.exit_code == 2 and "format differ" in result.output


def _cache_command(ingested, out):
    return [LATTE, "cache", "--manifest", str(ingested["manifest"]), "--vae", str(ingested["vae"]), "--out", str(out),
            "--format", "mindrecord", "--image-size", "32", "--workers", "0", "--shard-videos", "1",
            "--chunk-frames", "4", "--micro-batch", "4"]


def test_kill_at_several_points_then_resume_gives_the_uninterrupted_cache(ingested, tmp_path):
    reference = tmp_path / "reference"
    _cache(ingested, reference, fmt="mindrecord", shard_videos=1)
    out = tmp_path / "out"
    ledger = out / "ledger.jsonl"
    for kill_after in (1, 3):
        proc = subprocess.Popen(_cache_command(ingested, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if ledger.exists() and len(ledger.read_text().splitlines()) >= kill_after:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(ledger.read_text().splitlines()) < 7
    done = len(ledger.read_text().splitlines())
    result = subprocess.run(_cache_command(ingested, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr  # the broken frame folder fails, as in the reference
    assert f"{7 - done} shards run, {done} already done" in result.stdout
    units = [json.loads(line)["unit_id"] for line in ledger.read_text().splitlines()]
    assert len(units) == len(set(units)) == 7
    _assert_same_cache(reference, out)
    assert not [n for n in os.listdir(out / "shards") if n.startswith(".staging-")]
    assert cache_report(out, verify=True)["corrupt_shards"] == []


def test_one_and_two_dask_workers_make_the_same_cache(ingested, numpy_cache, tmp_path):
    for workers in (1, 2):
        summary = _cache(ingested, tmp_path / f"w{workers}", workers=workers)
        assert summary["videos"] == 6 and summary["failed"] == 1
        _assert_same_cache(numpy_cache[0], tmp_path / f"w{workers}")


@pytest.mark.slow
def test_a_5000_frame_video_caches_in_mindrecord(tmp_path):
    """The seed's failure: one record per long video overflows MindRecord's page. Here: chunks (page
    sizes follow the chunk's bytes, so 128² frames exercise the same path as 256² at a quarter of the cost)."""
    frames = moving_square_frames(50, height=128, width=128)
    write_mp4(tmp_path / "src" / "long.mp4", np.concatenate([frames] * 100))  # 5,000 frames
    run_ingest([tmp_path / "src"], tmp_path / "ingest", workers=0, progress=False)
    # the narrowest 8x VAE (4 channels per level): the record sizes are the point here, not the network
    vae = write_vae_folder(tmp_path / "vae", block_out_channels=(4, 4, 4, 4), groups=2)
    summary = run_cache(tmp_path / "ingest", vae, tmp_path / "cache", fmt="mindrecord", image_size=128, workers=0,
                        micro_batch=16, progress=False)
    assert summary["videos"] == 1 and summary["frames"] == 5000 and summary["failed"] == 0
    video = open_cache(tmp_path / "cache").read("long.mp4")
    assert video["mean"].shape == (5000, 4, 16, 16)
    # the first and last chunks hold those frames' latents, in order
    import decord
    from latte_core import AutoencoderKL
    reader = decord.VideoReader(str(tmp_path / "src" / "long.mp4"))
    model = AutoencoderKL.from_pretrained(vae)
    for start in (0, 4984):
        frames = reader.get_batch(list(range(start, start + 16))).asnumpy().astype(np.float32) / 127.5 - 1
        mean, _ = model.encode_video(frames.transpose(0, 3, 1, 2)[None], micro_batch=16)
        np.testing.assert_allclose(video["mean"][start:start + 16].astype(np.float32), mean[0], rtol=2e-3, atol=2e-3)


def test_report_counts_and_detects_a_changed_shard(ingested, tmp_path):
    out = tmp_path / "cache"
    _cache(ingested, out, fmt="parquet")
    result = CliRunner().invoke(main, ["report", str(out), "--json", "--verify"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["videos"] == 6 and figures["frames"] == 9 + 12 + 15 + 18 + 21 + 7
    # frame 4 of the broken frame folder is not an image: the decoder's own category
    assert figures["failed_by_category"] == {"corrupt frame": 1} and figures["verified_shards"] == 4
    assert figures["cache_to_source_bytes"] > 0 and figures["seconds_by_phase"]["encode"] > 0
    shard = sorted((out / "shards").iterdir())[0] / "shard.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["report", str(out), "--verify"])
    assert result.exit_code == 1 and "CORRUPT" in result.output


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root (CI runs as root)")
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_a_full_disk_stops_the_job_and_keeps_committed_shards(ingested, tmp_path, fmt):
    # room for the first two shards of a reference run, plus slack for cache.json, the ledger and what
    # writers need while writing (MindRecord's SQLite index journal, whole pages)
    reference = tmp_path / "reference"
    _cache(ingested, reference, fmt=fmt, dtype="float32", shard_videos=1)
    shard_bytes = [json.loads(line)["disk_bytes"] for line in (reference / "ledger.jsonl").read_text().splitlines()]
    size_kb = (sum(shard_bytes[:2]) + 96 * 1024) // 1024
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)], check=True)
    try:
        with pytest.raises(DiskFull, match="no space left"):
            _cache(ingested, mount / "cache", fmt=fmt, dtype="float32", shard_videos=1)
        assert os.getpid() not in holders(mount), holders(mount)  # the failed job closed what it wrote
        ledger = mount / "cache" / "ledger.jsonl"
        records = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
        assert len(records) < 7
        if fmt != "mindrecord":  # MindRecord will not start a file with less than ~1 MB free: it stops at once
            assert len(records) >= 1
        report = cache_report(mount / "cache", verify=True)
        assert report["corrupt_shards"] == [] and report["verified_shards"] == len(records)
        assert not [n for n in os.listdir(mount / "cache" / "shards") if n.startswith(".staging-")]
    finally:
        unmount(mount)
