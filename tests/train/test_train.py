import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import mindspore as ms

from conftest import BIN, ROOT, free_port
from latte_toolkit.cli import main
from latte_toolkit.pretrained import PRETRAINED
from latte_toolkit.train.config import TrainConfigError, load_train_config
from latte_toolkit.train.loop import learning_rate

TINY = {"model_name": "Latte-S/2", "depth": 2, "hidden_size": 64, "num_heads": 4, "image_size": 32, "num_frames": 4,
        "dtype": "fp32", "amp_level": "O0", "train_data_type": "numpy", "start_learning_rate": 1e-3,
        "train_batch_size": 2, "use_ema": True, "ema_decay": 0.9, "step_mode": True, "ckpt_save_interval": 3,
        "ckpt_max_keep": 5, "seed": 0, "epochs": 100}


def _config(tmp_path, name="config.yaml", **overrides):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return str(path)


def _train(config, *args):
    result = CliRunner().invoke(main, ["train", "-c", config, *args])
    return result


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _state(folder):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(folder / "train_state.ckpt")).items()}


@pytest.mark.slow
def test_resume_continues_bit_identically(caches, tmp_path):
    """6 steps in one go, and 3 steps + kill + resume + 3 steps: the same losses and final state
    (weights, EMA, Adam moments, loss scale), with accumulation, clipping, an fp16 loss scale and Min-SNR weights."""
    options = dict(gradient_accumulation_steps=2, clip_grad=True, max_grad_norm=0.5, amp_level="O2", dtype="fp16",
                   init_loss_scale=1024, scale_window=2, num_parallel_workers=2, snr_gamma=5.0)
    whole = tmp_path / "whole"
    assert _train(_config(tmp_path, **options), "--cache", str(caches["numpy"]), "--output-dir", str(whole),
                  "--max-steps", "6").exit_code == 0
    parts = tmp_path / "parts"
    config = _config(tmp_path, "parts.yaml", **options)
    assert _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(parts), "--max-steps", "3").exit_code == 0
    refused = _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(parts), "--max-steps", "6")
    assert refused.exit_code == 2 and "--resume" in refused.output
    result = _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(parts), "--max-steps", "6", "--resume")
    assert result.exit_code == 0, result.output
    assert [r["loss"] for r in _log(parts)] == [r["loss"] for r in _log(whole)]
    assert [r["loss_scale"] for r in _log(whole)][-1] != 1024  # the scale moved and was carried over
    expected, got = _state(whole / "ckpt" / "step-00000006"), _state(parts / "ckpt" / "step-00000006")
    assert set(expected) == set(got) and any(k.startswith("ema.") for k in got) and "scale_value" in got
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    state = json.loads((parts / "ckpt" / "step-00000006" / "state.json").read_text())
    assert state["step"] == 6 and state["loader"]["position"] > 0
    assert (parts / "loss_curve.png").stat().st_size > 1000


def test_sampling_weights_load_strictly_into_a_plain_latte(caches, tmp_path):
    run = tmp_path / "run"
    assert _train(_config(tmp_path), "--cache", str(caches["numpy"]), "--output-dir", str(run),
                  "--max-steps", "7").exit_code == 0
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-00000003", "step-00000006", "step-00000007"]
    from latte_core import create_latte
    model = create_latte("Latte-S/2", depth=2, hidden_size=64, num_heads=4, input_size=8, num_frames=4)
    weights = ms.load_checkpoint(str(run / "ckpt" / "step-00000007" / "ema.ckpt"))
    assert ms.load_param_into_net(model, weights, strict_load=True) == ([], [])
    ema = _state(run / "ckpt" / "step-00000007")
    np.testing.assert_array_equal(model.final_layer.linear.weight.asnumpy(), ema["ema.final_layer.linear.weight"])
    assert not np.array_equal(ema["ema.final_layer.linear.weight"], ema["final_layer.linear.weight"])


def test_checkpoints_beyond_ckpt_max_keep_are_deleted(caches, tmp_path):
    run = tmp_path / "run"
    assert _train(_config(tmp_path, ckpt_save_interval=1, ckpt_max_keep=2), "--cache", str(caches["numpy"]),
                  "--output-dir", str(run), "--max-steps", "4").exit_code == 0
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-00000003", "step-00000004"]


@pytest.mark.slow
def test_a_tiny_latte_overfits_a_tiny_cache(caches, tmp_path):
    """Documented in README: on the 7-clip test cache, a 2-block Latte's loss falls from ~1 to below
    0.25 (mean of the last 20 of 300 steps)."""
    run = tmp_path / "run"
    config = _config(tmp_path, start_learning_rate=2e-3, train_batch_size=7, use_ema=False, ckpt_save_interval=300,
                     num_frames=8, sample_stride=1, hidden_size=96)
    result = _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(run), "--max-steps", "300")
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in _log(run)]
    assert np.mean(losses[:5]) > 0.8 and np.mean(losses[-20:]) < 0.25, (losses[:5], losses[-20:])
    # the split by timestep quartile: each step's mean lies between its quartiles' means (1e-5: float32
    # mean in the step against a float64 mean of the same per-sample losses here), and epsilon
    # prediction's loss is larger at low noise than at high noise (the curve's point: the mean hides the
    # high-noise steps)
    quartiles = [r["loss_by_t_quartile"] for r in _log(run)]
    for loss, by_quartile in zip(losses, quartiles):
        present = [value for value in by_quartile if value is not None]
        assert len(by_quartile) == 4 and min(present) - 1e-5 <= loss <= max(present) + 1e-5, (loss, by_quartile)
    first, last = (np.mean([q[i] for q in quartiles if q[i] is not None]) for i in (0, 3))
    assert first > 3 * last, (first, last)


def test_a_non_finite_batch_stops_the_run_naming_its_video_and_keeps_the_last_good_checkpoint(caches, tmp_path):
    from latte_toolkit.datasets.cache import open_cache, read_ledger, shard_digest
    cache = tmp_path / "cache"
    shutil.copytree(caches["float32"], cache)
    entry = open_cache(cache).entries["clip_5.mp4"]  # an older cache: the data holds a NaN (checksums agree)
    shard = cache / "shards" / entry["shard"]
    mean = np.load(shard / f"{entry['offset']}.mean.npy")
    mean[:] = np.nan
    np.save(shard / f"{entry['offset']}.mean.npy", mean)
    records = read_ledger(cache)
    for record in records:
        if record["unit_id"] == entry["shard"]:
            record["sha256"], record["bytes"] = shard_digest(shard)
    (cache / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    result = _train(_config(tmp_path, ckpt_save_interval=1, train_batch_size=1, shuffle=False), "--cache", str(cache),
                    "--output-dir", str(run), "--max-steps", "20")
    assert result.exit_code == 2
    assert "non-finite latents or caption embeddings of video(s) clip_5.mp4 " in result.output
    bad_step = int(result.output.split("Error: step ")[1].split(":")[0])
    saved = sorted(p.name for p in (run / "ckpt").iterdir())
    assert saved[-1] == f"step-{bad_step - 1:08d}"
    assert all(np.isfinite(v).all() for v in _state(run / "ckpt" / saved[-1]).values())
    _assert_strict_json(run)  # the non-finite batch never reaches a JSON file as NaN


def _assert_strict_json(folder):
    """Every .json and .jsonl line under `folder` parses as strict JSON (no NaN / Infinity)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    found = 0
    for path in sorted(folder.rglob("*.json*")):
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for line in lines:
            json.loads(line, parse_constant=refuse)
            found += 1
    assert found >= 3, found  # config.json, train_log.jsonl, a checkpoint's state.json


@pytest.mark.slow
def test_two_msrun_workers_equal_one_worker_with_twice_the_batch(caches, tmp_path):
    """With image-video joint training (4 frames + 3 images), which runs every part of the plain path too
    (use_image_num 0 is the same model bit for bit: tests/latte_core/test_latte_img.py), plus the images'
    draws from the whole cache on every rank."""
    use_image_num = 3
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "GLOG_v": "3"}
    parallel, single = tmp_path / "parallel", tmp_path / "single"
    images = {"image_video_joint": bool(use_image_num), "use_image_num": use_image_num}
    command = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}", f"--log_dir={tmp_path / 'logs'}",
               "--join=True", os.path.join(BIN, "latte"), "train", "-c",
               _config(tmp_path, "b1.yaml", train_batch_size=1, **images),
               "--cache", str(caches["numpy"]), "--output-dir", str(parallel), "--max-steps", "3", "--use_parallel", "True"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert _train(_config(tmp_path, "b2.yaml", train_batch_size=2, **images), "--cache", str(caches["numpy"]),
                  "--output-dir", str(single), "--max-steps", "3").exit_code == 0
    assert [round(r["loss"], 5) for r in _log(parallel)] == [round(r["loss"], 5) for r in _log(single)]
    expected, got = _state(single / "ckpt" / "step-00000003"), _state(parallel / "ckpt" / "step-00000003")
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_training_from_videos_and_class_labels(caches, tmp_path):
    """The uncached path (decode + the VAE every step) with class labels from a CSV list."""
    source = tmp_path / "videos"
    shutil.copytree(caches["root"] / "src", source, ignore=shutil.ignore_patterns("sky"))
    (source / "list.csv").write_text("video,class\n" + "".join(f"clip_{i}.mp4,{i % 3}\n" for i in range(7)))
    run = tmp_path / "run"
    config = _config(tmp_path, train_data_type="video_file", data_folder=str(source / "list.csv"),
                     vae_checkpoint=str(caches["vae"]), condition="class", num_classes=3)
    result = _train(config, "--output-dir", str(run), "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert (run / "ingest" / "manifest.parquet").is_file() and len(_log(run)) == 2
    state = _state(run / "ckpt" / "step-00000002")
    assert state["y_embedder.embedding_table.weight"].shape == (4, 64)  # 3 classes + the null class


def test_a_class_run_with_a_scaled_condition_rate_resumes_bit_identically(tmp_path):
    """condition_lr_scale gives the class table its own rate parameter in the optimizer: it is saved and
    resumed like the rest (4 steps in one go = 2 + resume + 2), and only that table moved faster."""
    from latte_toolkit.tools.fixtures import write_synthetic_cache
    cache = write_synthetic_cache(tmp_path / "labelled", videos=6, frames=8, latent=4, shard_videos=2, chunk_frames=4)
    options = dict(condition="class", num_classes=10, condition_lr_scale=20.0, weight_decay=0.01)
    runs = {}
    for name, stops in (("whole", ["4"]), ("parts", ["2", "4"])):
        config = _config(tmp_path, f"{name}.yaml", **options)
        for i, stop in enumerate(stops):
            result = _train(config, "--cache", str(cache), "--output-dir", str(tmp_path / name), "--max-steps", stop,
                            *(["--resume"] if i else []))
            assert result.exit_code == 0, result.output
        runs[name] = _state(tmp_path / name / "ckpt" / "step-00000004")
    assert set(runs["whole"]) == set(runs["parts"]) and "learning_rate_group_1" in runs["whole"]
    for key in runs["whole"]:
        np.testing.assert_array_equal(runs["parts"][key], runs["whole"][key], err_msg=key)
    np.testing.assert_allclose(runs["whole"]["learning_rate_group_1"], 20 * runs["whole"]["learning_rate"], rtol=1e-6)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(TrainConfigError, match="unknown key 'learning_rat'"):
        load_train_config(_config(tmp_path, learning_rat=1e-4, data_folder="x"))
    with pytest.raises(TrainConfigError, match="train_batch_size must be int"):
        load_train_config(_config(tmp_path, train_batch_size="5", data_folder="x"))
    with pytest.raises(TrainConfigError, match="image_video_joint"):
        load_train_config(_config(tmp_path, image_video_joint=True, data_folder="x"))
    with pytest.raises(TrainConfigError, match="snr_gamma"):
        load_train_config(_config(tmp_path, snr_gamma=0, data_folder="x"))
    assert load_train_config(_config(tmp_path, snr_gamma=5, data_folder="x"))["snr_gamma"] == 5
    with pytest.raises(TrainConfigError, match="condition_lr_scale 10 scales the rate of a class or text path"):
        load_train_config(_config(tmp_path, condition_lr_scale=10, data_folder="x"))
    with pytest.raises(TrainConfigError, match="condition_lr_scale"):
        load_train_config(_config(tmp_path, condition="class", num_classes=2, condition_lr_scale=0, data_folder="x"))
    with pytest.raises(TrainConfigError, match=r"frame_noise_correlation must be in \[0, 1\)"):
        load_train_config(_config(tmp_path, frame_noise_correlation=1.0, data_folder="x"))
    assert load_train_config(_config(tmp_path, data_folder="x"))["frame_noise_correlation"] == 0.0
    with pytest.raises(TrainConfigError, match="prediction_type must be one of"):
        load_train_config(_config(tmp_path, prediction_type="v", data_folder="x"))
    assert load_train_config(_config(tmp_path, data_folder="x"))["prediction_type"] == "epsilon"
    # a sample's training noise is its usual draws with the video frames correlated (the images' as they were)
    from latte_core.diffusion import correlate_frames
    from latte_toolkit.train.loop import diffusion_draws
    t, independent, _, _ = diffusion_draws(np.arange(3), 1, 0, (6, 4, 8, 8), 1000, 0.0, num_images=2)
    t_mixed, mixed, _, _ = diffusion_draws(np.arange(3), 1, 0, (6, 4, 8, 8), 1000, 0.0, 2, frame_noise_correlation=0.5)
    np.testing.assert_array_equal(t_mixed, t)
    np.testing.assert_array_equal(mixed, correlate_frames(independent, 0.5, frames=4))
    result = _train(_config(tmp_path, dtype="bf16", amp_level="O2", data_folder="x"))
    assert result.exit_code == 2 and "bf16 needs Ascend" in result.output
    shipped = load_train_config(str(ROOT / "configs/training/sky_numpy_video.yaml"), {"data_folder": "cache"})
    assert shipped["num_frames"] == 128 and shipped["gradient_accumulation_steps"] == 4
    assert shipped["sample_stride"] == 1 and shipped["train_data_type"] == "numpy" and shipped["use_recompute"]
    shipped = load_train_config(str(ROOT / "configs/training/sky_video.yaml"), {"data_folder": "sky_train"})
    assert (shipped["train_batch_size"], shipped["sample_stride"], shipped["dtype"]) == (5, 3, "fp16")


def test_logit_normal_timesteps_gather_at_the_middle_and_uniform_ones_are_the_references(tmp_path):
    """20,000 draws: logit-normal (0, 1) puts 68.3 % of them within T·sigmoid(±1) = 269..731 and its median
    at T/2; mean -0.4 moves the median to T·sigmoid(-0.4) = 401; bounds 0.015 and 10 timesteps (the binomial
    std of the fraction is 0.0033, the median's ~9 timesteps at 3 sigma). Uniform draws are rng.integers', as
    before the key (a run's timesteps do not change)."""
    from latte_toolkit.train.loop import draw_timestep, timestep_logit_normal
    rng = np.random.default_rng(0)
    draws = np.array([draw_timestep(rng, 1000, (0.0, 1.0)) for _ in range(20000)])
    assert draws.min() >= 0 and draws.max() <= 999
    assert abs(((draws >= 269) & (draws < 731)).mean() - 0.683) < 0.015
    assert abs(np.median(draws) - 500) < 10
    rng = np.random.default_rng(1)
    assert abs(np.median([draw_timestep(rng, 1000, (-0.4, 1.0)) for _ in range(20000)]) - 401) < 10
    first, second = np.random.default_rng(2), np.random.default_rng(2)
    assert [draw_timestep(first, 1000) for _ in range(50)] == list(second.integers(0, 1000, 50))
    config = load_train_config(_config(tmp_path, timestep_sampling="logit_normal", data_folder="x"))
    assert timestep_logit_normal(config) == (0.0, 1.0)
    assert timestep_logit_normal(load_train_config(_config(tmp_path, data_folder="x"))) is None


def test_learning_rate_schedules():
    config = {"start_learning_rate": 1.0, "end_learning_rate": 0.0, "warmup_steps": 4, "decay_steps": 0,
              "scheduler": "cosine_decay"}
    rates = [learning_rate(config, step, 14) for step in range(14)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0] and rates[4] == 1.0
    assert rates[9] == pytest.approx(0.5) and rates[-1] < 0.03
    assert learning_rate({**config, "scheduler": "constant"}, 100, 14) == 1.0


def test_every_key_is_documented_in_the_readme():
    from latte_toolkit.train.config import KEYS
    readme = (ROOT / "README.md").read_text()
    assert [key.name for key in KEYS if f"| `{key.name}` |" not in readme] == []


def test_max_minutes_stops_with_a_checkpoint_that_resume_continues(caches, tmp_path):
    """A time limit shorter than one step: the run stops after its first step with a checkpoint (not at
    max_steps), and --resume without the limit continues to max_steps."""
    run = tmp_path / "run"
    config = _config(tmp_path, ckpt_save_interval=100, max_minutes=0.0001)
    result = _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(run), "--max-steps", "4")
    assert result.exit_code == 0, result.output
    assert [p.name for p in sorted((run / "ckpt").iterdir())] == ["step-00000001"]
    resumed = _config(tmp_path, "resume.yaml", ckpt_save_interval=100)
    result = _train(resumed, "--cache", str(caches["numpy"]), "--output-dir", str(run), "--max-steps", "4", "--resume")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4]
    with pytest.raises(TrainConfigError, match="max_minutes"):
        load_train_config(_config(tmp_path, "bad.yaml", max_minutes=0, data_folder="x"))


def test_sample_interval_writes_videos_of_the_run_so_far(caches, tmp_path):
    """sample_interval 2 in a 3-step run: a checkpoint at step 2 (ckpt_save_interval is 3) and two videos
    sampled from it in OUTPUT/samples/step-00000002; a VAE other than the cache's, or none, is refused
    before the run folder exists."""
    run = tmp_path / "run"
    config = _config(tmp_path, sample_interval=2, sample_num_videos=2, sample_vae=str(caches["vae"]))
    result = _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(run), "--max-steps", "3")
    assert result.exit_code == 0, result.output
    assert [p.name for p in sorted((run / "ckpt").iterdir())] == ["step-00000002", "step-00000003"]
    samples = run / "samples" / "step-00000002"
    summary = json.loads((samples / "summary.json").read_text())
    assert summary["checkpoint"] == str(run / "ckpt" / "step-00000002") and summary["videos"] == 2
    assert summary["method"] == "dpm-solver++" and summary["steps"] == 20
    assert sorted(p.name for p in samples.glob("sample_*.gif")) == ["sample_000.gif", "sample_001.gif"]
    other_vae = os.path.join(PRETRAINED, "vae-clouds")  # a working VAE, not the cache's
    for overrides, message in (({"sample_vae": str(other_vae)}, "not the VAE the cache"),
                               ({"sample_vae": None}, "sample_interval 2 needs sample_vae")):
        bad = _config(tmp_path, "bad.yaml", sample_interval=2, **overrides)
        refused = tmp_path / "refused"
        result = _train(bad, "--cache", str(caches["numpy"]), "--output-dir", str(refused), "--max-steps", "3")
        assert result.exit_code == 2 and message in result.output, result.output
        assert not refused.exists()
