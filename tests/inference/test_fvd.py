"""`latte eval fvd`: the distance against cd-fvd 0.1.1's on the fixture's logits, the statistics file, the
command on small videos made here (random-weight I3D of the fixtures), its protocol checks and bad input,
and the same statistics from dask workers and msrun ranks as from one process."""
import json
import os
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import BIN, free_port
from latte_toolkit.cli import main
from latte_toolkit.datasets.video import write_gif, write_mp4
from latte_toolkit.inference.config import FvdError
from latte_toolkit.inference.fvd import (FeatureStats, bootstrap_fvd, frechet_distance, kernel_distance, mean_cov,
                                         metric_names, protocol_mismatch)
from latte_toolkit.tools.synthetic import cloud_frames, write_cloud_dataset

FRAMES = "9"  # the fewest the I3D takes: each video costs ~1 s here


@pytest.fixture(scope="module")
def fvd_io(fixtures_dir):
    return dict(np.load(fixtures_dir / "fvd" / "fvd_io.npz"))


@pytest.fixture(scope="module")
def i3d(fixtures_dir):
    return str(fixtures_dir / "fvd" / "i3d_random_400.pt")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """real/: four 32 px cloud clips of 12 frames; samples/: a `latte sample` folder (summary.json, MP4s
    and the same videos as GIFs) of two 9-frame clips and one MP4 that does not decode."""
    root = tmp_path_factory.mktemp("fvd_videos")
    write_cloud_dataset(root / "real", videos=4, num_frames=12, size=32, seed=1)
    samples = root / "samples"
    samples.mkdir()
    (samples / "summary.json").write_text("{}")
    for i in range(2):
        frames = cloud_frames(9, size=32, seed=500 + i)
        write_mp4(str(samples / f"sample_{i:03d}.mp4"), frames)
        write_gif(str(samples / f"sample_{i:03d}.gif"), frames, fps=8)
    (samples / "sample_002.mp4").write_bytes(b"not a video" * 100)
    return root


def _errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def eval_fvd(*args):
    return CliRunner().invoke(main, ["eval", "fvd", "--frames", FRAMES, "--batch-size", "2", *map(str, args)])


# ------------------------------------------------------------------------------------------- the distance
def test_distance_matches_cd_fvd_on_the_fixture_logits(fvd_io):
    """cd-fvd's distance to the fixture's 1e-3 relative (float64 throughout; measured ~1e-8): on 8 videos
    (singular covariances), on full-rank statistics, and a set against itself below 1e-6 of the FVD
    (what sqrtm's rounding leaves of zero)."""
    real, fake = mean_cov(fvd_io["real_logits"]), mean_cov(fvd_io["fake_logits"])
    assert abs(frechet_distance(*real, *fake) - fvd_io["fvd"]) < 1e-3 * fvd_io["fvd"]
    full = frechet_distance(*mean_cov(fvd_io["full_rank_real"]), *mean_cov(fvd_io["full_rank_fake"]))
    assert abs(full - fvd_io["fvd_full_rank"]) < 1e-3 * fvd_io["fvd_full_rank"]
    assert abs(frechet_distance(*real, *real)) < 1e-6 * fvd_io["fvd"]


def test_kvd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    """Unbiased MMD^2: two samples of one Gaussian give |KVD| well below the KVD of a shift by 1 in every
    feature; seeded subsets give the same value twice."""
    rng = np.random.default_rng(0)
    real, same, shifted = rng.normal(size=(3, 100, 400))
    same_kvd = kernel_distance(real, same, seed=1)
    assert same_kvd == kernel_distance(real, same, seed=1)
    assert abs(same_kvd) < 0.01 * kernel_distance(real, shifted + 1.0, seed=1)


def test_bootstrap_resamples_the_fake_features_with_a_seed():
    """The real statistics fixed and the fake features resampled: the same seed gives the same figures,
    another seed others."""
    rng = np.random.default_rng(0)
    real = FeatureStats(rng.normal(size=(200, 40)), {})  # 40 features: the distance is the same code at any width
    fake = rng.normal(0.2, 1.0, size=(200, 40)).astype(np.float32)
    first, again = bootstrap_fvd(real, fake, 10, seed=3), bootstrap_fvd(real, fake, 10, seed=3)
    assert first == again and first["rounds"] == 10 and 0 < first["std"] and first["p2.5"] < first["p97.5"]
    assert first != bootstrap_fvd(real, fake, 10, seed=4)


def test_the_metric_is_named_by_its_clip_length():
    assert metric_names(16) == ("FVD16", "KVD16") and metric_names(128) == ("FVD128", "KVD128")


def test_statistics_round_trip_through_npz_without_pickle(tmp_path):
    features = np.random.default_rng(0).normal(size=(7, 400)).astype(np.float32)
    protocol = {"frames": 16, "detector_sha256": "ab" * 32}
    saved = FeatureStats(features, protocol)
    path = saved.save(str(tmp_path / "real.npz"))
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert sorted(data.files) == ["count", "cov", "features", "mean", "protocol"]
    loaded = FeatureStats.load(path)
    assert loaded.count == 7 and loaded.protocol == protocol
    for name in ("features", "mean", "cov"):
        assert np.array_equal(getattr(loaded, name), getattr(saved, name)), name
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(FvdError, match="other.npz.*'cov'|other.npz.*'mean' has shape"):
        FeatureStats.load(str(tmp_path / "other.npz"))


def test_a_protocol_difference_is_named_with_both_values():
    saved = {"frames": 16, "resolution": 256, "seed": 0}
    now = {**saved, "frames": 128}
    message = protocol_mismatch(saved, {field: now.get(field) for field in
                                        ("detector", "detector_sha256", "frames", "resolution", "real_stride",
                                         "num_videos", "seed", "clip_rule", "features", "version")}, "real.npz")
    assert "real.npz" in message and "frames: 16 in the file, 128 now" in message


# ------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def first_run(videos, i3d, tmp_path_factory):
    """In this process: real 3 of 4 clips drawn; fake: the sample folder's MP4s (GIFs skipped), one
    unreadable (counted), so 2 of --num-videos 3 with --allow-fewer; the real statistics saved."""
    folder = tmp_path_factory.mktemp("first_run")
    stats, out = folder / "real.npz", folder / "result.json"
    result = eval_fvd("--real", videos / "real", "--fake", videos / "samples", "--i3d", i3d, "--num-videos", 3,
                      "--allow-fewer", "--save-stats", stats, "--out", out, "--bootstrap", 20)
    assert result.exit_code == 0, result.output
    return result, stats, out


def test_eval_fvd_on_videos_then_on_saved_statistics(first_run, videos, i3d, tmp_path):
    """The result names the metric and records the protocol and counts; the saved statistics give the same
    FVD; another protocol is refused by name, nothing written."""
    result, stats, out = first_run
    line, payload = result.stdout.strip().splitlines()[-2:]
    first = json.loads(payload)
    assert first == json.loads(out.read_text())
    assert first["metric"] == "FVD9" and first["FVD9"] > 0 and np.isfinite(first["KVD9"])
    assert line.startswith(f"FVD9 {first['FVD9']:.2f}  KVD9") and "3 real / 2 fake videos" in line
    assert first["real"]["count"] == 3 and first["fake"]["count"] == 2 and first["fake"]["failed"] == 1
    assert first["fake"]["failures"][0]["video_id"] == "sample_002.mp4"
    protocol = first["protocol"]
    assert (protocol["frames"], protocol["num_videos"], protocol["resolution"], protocol["real_stride"]) == (9, 3, 256, 1)
    assert len(protocol["detector_sha256"]) == 64
    boot = first["bootstrap"]
    assert boot["rounds"] == 20 and boot["std"] > 0 and boot["p2.5"] <= boot["p97.5"]

    again = eval_fvd("--real", stats, "--fake", videos / "samples", "--i3d", i3d, "--num-videos", 3, "--allow-fewer")
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["real"] == {"source": str(stats), "kind": "stats", "count": 3, "failed": 0, "failures": []}
    # the same fake features in this process and the real statistics read back bit for bit
    assert second["FVD9"] == first["FVD9"]

    never = tmp_path / "never.json"
    other = eval_fvd("--real", stats, "--fake", videos / "samples", "--i3d", i3d, "--num-videos", 3,
                     "--allow-fewer", "--real-stride", 2, "--out", never)
    assert other.exit_code == 2 and len(_errors(other)) == 1, other.output
    assert str(stats) in _errors(other)[0] and "real_stride: 1 in the file, 2 now" in _errors(other)[0]
    assert not never.exists()


@pytest.mark.parametrize("case", ["not_i3d", "too_few", "too_short", "fake_stats"])
def test_bad_input_is_one_error_line_naming_it_and_writes_nothing(case, videos, i3d, tmp_path):
    real, fake, extra = videos / "real", videos / "samples", []
    if case == "not_i3d":
        from safetensors.numpy import save_file
        i3d = tmp_path / "resnet.safetensors"
        save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(i3d))
        named = [i3d, "Conv3d_1a_7x7.conv3d.weight", "fc.weight"]
    elif case == "too_few":
        extra, named = ["--num-videos", 3], [fake, "2 usable videos (1 unreadable)", "--allow-fewer"]
    elif case == "too_short":
        extra, named = ["--frames", 12, "--num-videos", 2], [fake, "9 frames"]
    else:
        fake, named = tmp_path / "s.npz", [tmp_path / "s.npz", "--fake"]
        FeatureStats(np.zeros((2, 400)), {}).save(str(fake))
    out = tmp_path / "out" / "result.json"
    result = eval_fvd("--real", real, "--fake", fake, "--i3d", i3d, "--out", out, "--save-stats",
                      tmp_path / "out" / "real.npz", *extra)
    assert result.exit_code == 2, result.output
    errors = _errors(result)
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for name in named:
        assert str(name) in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the same statistics at scale
def _stats_features(path):
    with np.load(path, allow_pickle=False) as data:
        return data["features"], data["mean"], data["cov"]


def _assert_same_statistics(ours, one_process):
    """Features within 1e-5 of their largest magnitude: a clip's logits do not depend on the runner, only on
    float32 rounding of the micro-batch it shared (oneDNN's accumulation order; bit-identical when the batches
    are the same); the float64 statistics then agree to the same relative bound."""
    (features, mean, cov), (f1, m1, c1) = _stats_features(ours), _stats_features(one_process)
    assert features.shape == f1.shape
    scale = np.abs(f1).max()
    assert np.abs(features - f1).max() <= 1e-5 * scale
    assert np.abs(mean - m1).max() <= 1e-5 * scale and np.abs(cov - c1).max() <= 1e-5 * scale ** 2


def test_dask_workers_reading_an_ingest_manifest_give_the_statistics_of_one_process(videos, i3d, first_run, tmp_path):
    """The real clips from `latte ingest`'s manifest of the same folder (the same video ids, so the same
    clips drawn), their features computed on a dask LocalCluster of one worker, one unit per micro-batch."""
    ingest = CliRunner().invoke(main, ["ingest", "--source", str(videos / "real"), "--out", str(tmp_path / "ingest"),
                                       "--workers", "0"])
    assert ingest.exit_code == 0, ingest.output
    stats = tmp_path / "real.npz"
    result = eval_fvd("--real", tmp_path / "ingest", "--fake", videos / "samples", "--i3d", i3d, "--num-videos", 3,
                      "--allow-fewer", "--workers", 1, "--unit-batches", 1, "--save-stats", stats)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["real"]["kind"] == "manifest"
    _assert_same_statistics(stats, first_run[1])


@pytest.mark.slow
def test_two_msrun_ranks_reading_curated_clips_give_the_statistics_of_one_process(videos, i3d, first_run, tmp_path):
    """The real clips from a `latte curate` folder of the same videos (one clip each, no cut: the same frames),
    clip i on rank i mod 2 (rank 1's one clip padded to the micro-batch of 2), gathered back in order."""
    for command in (["ingest", "--source", str(videos / "real"), "--out", str(tmp_path / "ingest")],
                    ["curate", "--manifest", str(tmp_path / "ingest"), "--out", str(tmp_path / "curate"),
                     "--min-clip-frames", "9", "--min-motion", "0", "--dedup-distance", "0"]):
        done = CliRunner().invoke(main, command + ["--workers", "0"])
        assert done.exit_code == 0, done.output
    stats, out = tmp_path / "real.npz", tmp_path / "result.json"
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "GLOG_v": "3"}
    command = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
               f"--log_dir={tmp_path / 'logs'}", "--join=True", os.path.join(BIN, "latte"), "eval", "fvd",
               "--real", str(tmp_path / "curate"), "--fake", str(videos / "samples"), "--i3d", i3d, "--num-videos", "3",
               "--allow-fewer", "--frames", FRAMES, "--batch-size", "2", "--save-stats", str(stats), "--out", str(out),
               "--use_parallel", "True"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads(out.read_text())["real"]["kind"] == "curate"
    _assert_same_statistics(stats, first_run[1])
