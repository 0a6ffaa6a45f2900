import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from conftest import BIN, free_port
from latte_toolkit.cli import main


def _class_config(tmp_path, latte_fixture, fixtures_dir, **overrides):
    """The reference class-conditional Latte (5 classes, 4 frames, 8x8 latents) with the fixture VAE."""
    config = {"checkpoint": str(latte_fixture["pt"]), "vae_checkpoint": str(fixtures_dir / "vae" / "vae_small_diffusers"),
              "model_name": "Latte-S/2", "depth": 4, "hidden_size": 96, "num_heads": 4, "condition": "class",
              "num_classes": 5, "image_size": 32, "num_frames": 4, "sampling_steps": 10, "ddim_sampling": True,
              "num_videos": 2, "batch_size": 2, "seed": 3, "output_path": str(tmp_path / "out")}
    config.update(overrides)
    path = tmp_path / f"sample-{len(os.listdir(tmp_path))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _latents(folder):
    return np.stack([np.load(folder / f"sample_{i:03d}.npy") for i in range(2)])


@pytest.mark.slow
def test_class_conditional_sampling_with_guidance_writes_gif_mp4_and_latents(latte_fixture, fixtures_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                       "--cfg-scale", "4", "--class-labels", "1,3"])
    assert result.exit_code == 0, result.output
    assert "| ckpt loading time | compile time | total sample time |" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 2 and summary["method"] == "ddim" and summary["guidance_scale"] == 4.0
    with Image.open(out / "sample_000.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32)
    import decord
    assert len(decord.VideoReader(str(out / "sample_001.mp4"))) == 4
    guided = _latents(out)
    assert guided.shape == (2, 4, 4, 8, 8) and np.isfinite(guided).all()
    # deterministic for a seed; the guidance scale and the classes change the videos
    runs = {}
    for name, args in {"same": ["--cfg-scale", "4", "--class-labels", "1,3"], "unguided": ["--cfg-scale", "1"],
                       "other_classes": ["--cfg-scale", "4", "--class-labels", "0,4"]}.items():
        folder = tmp_path / name
        result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                           "--output-dir", str(folder), *args])
        assert result.exit_code == 0, result.output
        runs[name] = _latents(folder)
    np.testing.assert_array_equal(runs["same"], guided)
    assert not np.allclose(runs["unguided"], guided) and not np.allclose(runs["other_classes"], guided)


def test_ddpm_sampling_from_a_training_run_folder(caches, tmp_path):
    """A run's checkpoint folder samples with the run's settings, the frame-correlated noise, the v
    prediction and the noise schedule it trained with included (state.json); the config may change the
    noise's correlation but not the prediction type or the schedule (a v model read as epsilon, or cosine
    read as linear, gives noise, so each is one error)."""
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model_name": "Latte-S/2", "depth": 2, "hidden_size": 64, "num_heads": 4,
                                      "image_size": 32, "num_frames": 4, "dtype": "fp32", "amp_level": "O0",
                                      "train_data_type": "numpy", "train_batch_size": 2, "epochs": 10,
                                      "frame_noise_correlation": 0.5, "prediction_type": "v_prediction",
                                      "noise_schedule": "squaredcos_cap_v2"}))
    result = CliRunner().invoke(main, ["train", "-c", str(config), "--cache", str(caches["numpy"]),
                                       "--output-dir", str(run), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "samples"
    result = CliRunner().invoke(main, ["sample", "--checkpoint", str(run / "ckpt" / "step-00000002"), "--vae",
                                       str(caches["vae"]), "--steps", "5", "--num-videos", "3", "--batch-size", "2",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.gif")) == ["sample_000.gif", "sample_001.gif", "sample_002.gif"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "ddpm" and summary["frame_noise_correlation"] == 0.5
    assert summary["prediction_type"] == "v_prediction" and summary["noise_schedule"] == "squaredcos_cap_v2"
    checkpoint = str(run / "ckpt" / "step-00000002")
    overrides = {"independent": {"frame_noise_correlation": 0.0}, "bad": {"frame_noise_correlation": 1.5},
                 "bad_prediction": {"prediction_type": "x0"}, "bad_mismatch": {"prediction_type": "epsilon"},
                 "bad_schedule": {"noise_schedule": "linear"}}
    for name, override in overrides.items():
        folder = tmp_path / name
        sampling = tmp_path / f"sample-{name}.yaml"
        sampling.write_text(yaml.safe_dump({"checkpoint": checkpoint, "vae_checkpoint": str(caches["vae"]),
                                            "sampling_steps": 5, "num_videos": 3, "batch_size": 2,
                                            "output_path": str(folder), **override}))
        result = CliRunner().invoke(main, ["sample", "-c", str(sampling)])
        if name.startswith("bad"):
            assert result.exit_code == 2 and list(override)[0] in result.output and not folder.exists()
            assert result.output.count("Error:") == 1
            continue
        assert result.exit_code == 0, result.output
        summary = json.loads((folder / "summary.json").read_text())
        assert {key: summary[key] for key in override} == override
        other = np.load(folder / "sample_000.npy")
        assert np.abs(other - np.load(out / "sample_000.npy")).max() > 0.1  # other noise, other video


def test_bad_sampling_requests_are_one_clear_error(latte_fixture, fixtures_dir, tmp_path):
    result = CliRunner().invoke(main, ["sample", "--checkpoint", str(tmp_path / "missing.ckpt")])
    assert result.exit_code == 2 and "no such checkpoint" in result.output
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                       "--class-labels", "7"])
    assert result.exit_code == 2 and "class_labels" in result.output
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir,
                                                                      hidden_size=128)])
    assert result.exit_code == 2 and "does not fit the model" in result.output


def test_a_video_is_the_same_whatever_the_batch_it_is_sampled_in(latte_fixture, fixtures_dir, tmp_path):
    """Each video's noise is seeded by (seed, video index): batches of 1 and of 2 give the same videos.
    Bound 1e-4 of the latents' scale: the batched matmuls round differently for another batch size
    (float32), and 10 guided DDPM steps amplify that a little; a different noise would differ by O(1)."""
    runs = {}
    for batch in (1, 2):
        folder = tmp_path / f"batch{batch}"
        result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir,
                                                                          ddim_sampling=False),
                                           "--batch-size", str(batch), "--cfg-scale", "4", "--output-dir", str(folder)])
        assert result.exit_code == 0, result.output
        runs[batch] = _latents(folder)
    assert np.abs(runs[1] - runs[2]).max() / np.abs(runs[2]).max() < 1e-4
    assert np.abs(runs[2][0] - runs[2][1]).max() > 0.1  # the two videos are not the same noise


@pytest.mark.slow
def test_dpm_solver_sampling_and_which_sampler_wins(latte_fixture, fixtures_dir, tmp_path, caplog):
    out = tmp_path / "dpm"
    config = _class_config(tmp_path, latte_fixture, fixtures_dir, ddim_sampling=True, sampling_steps=None)
    result = CliRunner().invoke(main, ["sample", "-c", config, "--sampler", "dpm-solver++", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "dpm-solver++" and summary["steps"] == 20  # the sampler's own default
    assert "ddim_sampling: true is ignored" in caplog.text
    latents = _latents(out)
    assert latents.shape == (2, 4, 4, 8, 8) and np.isfinite(latents).all()
    # without --sampler, MindONE's ddim_sampling decides
    result = CliRunner().invoke(main, ["sample", "-c", config, "--output-dir", str(tmp_path / "ddim")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ddim" / "summary.json").read_text())["method"] == "ddim"


def test_a_step_count_the_sampler_cannot_take_is_refused_by_name(latte_fixture, fixtures_dir, tmp_path):
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                       "--sampler", "ddim", "--steps", "300", "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and "sampling_steps" in result.stderr and "300" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_sampling_over_msrun_splits_the_videos_and_gives_the_files_of_one_process(latte_fixture, fixtures_dir,
                                                                                   tmp_path):
    """Two msrun ranks (video i on rank i mod 2; rank 1's one video padded to the batch) give the videos
    one process gives at batch 1. Bound 1e-4 of the latents' scale, as for the batch sizes above: only the
    batch the matmuls see differs."""
    config = _class_config(tmp_path, latte_fixture, fixtures_dir, num_videos=3)
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "GLOG_v": "3"}
    parallel, single = tmp_path / "parallel", tmp_path / "single"
    command = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
               f"--log_dir={tmp_path / 'logs'}", "--join=True", os.path.join(BIN, "latte"), "sample", "-c", config,
               "--cfg-scale", "4", "--output-dir", str(parallel), "--use_parallel", "True"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = CliRunner().invoke(main, ["sample", "-c", config, "--cfg-scale", "4", "--batch-size", "1",
                                       "--output-dir", str(single)])
    assert result.exit_code == 0, result.output
    summary = json.loads((parallel / "summary.json").read_text())
    assert [row["rank"] for row in summary["ranks"]] == [0, 1] and [r["videos"] for r in summary["ranks"]] == [2, 1]
    assert summary["files"] == [str(parallel / f"sample_{i:03d}.gif") for i in range(3)]
    ours, one_process = (np.stack([np.load(f / f"sample_{i:03d}.npy") for i in range(3)]) for f in (parallel, single))
    assert np.abs(ours - one_process).max() / np.abs(one_process).max() < 1e-4


def test_use_parallel_without_msrun_is_one_error_and_writes_nothing(latte_fixture, fixtures_dir, tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                       "--output-dir", str(out), "--use_parallel", "True"])
    assert result.exit_code == 2 and "Error: use_parallel" in result.output and "msrun" in result.output
    assert not out.exists()


def _strict_json(path):
    """Parse `path` as strict JSON: NaN, Infinity and -Infinity (Python's json extensions) are errors."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")
    return json.loads(pathlib.Path(path).read_text(), parse_constant=refuse)


def test_summary_json_is_strict_json(latte_fixture, fixtures_dir, tmp_path):
    out = tmp_path / "strict"
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                       "--steps", "2", "--num-videos", "1", "--batch-size", "1", "--cfg-scale", "4",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    summary = _strict_json(out / "summary.json")
    assert summary["guidance_scale"] == 4.0 and summary["config"]["guidance_scale"] == 4.0
    assert np.isfinite(np.load(out / "sample_000.npy")).all()


def _one_error_line(result):
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize("option,value,named", [
    ("--cfg-scale", "inf", "--cfg-scale"), ("--cfg-scale", "-inf", "--cfg-scale"), ("--cfg-scale", "nan", "--cfg-scale"),
    ("--cfg-scale", "1e308", "--cfg-scale"), ("--cfg-scale", "-1", "--cfg-scale"), ("--cfg-scale", "101", "--cfg-scale"),
    ("--eta", "nan", "--eta"), ("--eta", "inf", "--eta"),
])
def test_a_non_finite_or_out_of_range_float_option_is_one_error_and_writes_nothing(latte_fixture, fixtures_dir,
                                                                                   tmp_path, option, value, named):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                       option, value, "--output-dir", str(out)])
    assert named in _one_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("key,value", [("guidance_scale", float("nan")), ("guidance_scale", float("inf")),
                                       ("guidance", 1e308), ("guidance_scale", 10 ** 400), ("ddim_eta", float("-inf")),
                                       ("frame_noise_correlation", float("nan")), ("sd_scale_factor", float("inf"))])
def test_a_non_finite_or_huge_float_key_is_one_error_naming_it_and_writes_nothing(latte_fixture, fixtures_dir,
                                                                                 tmp_path, key, value):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir,
                                                                      output_path=str(out), **{key: value})])
    line = _one_error_line(result)
    assert {"guidance": "guidance_scale"}.get(key, key) in line
    assert not out.exists()


def test_guidance_on_an_unconditional_model_is_one_error_as_a_prompt_is(tmp_path):
    """The shipped cloud model is unconditional: a guidance scale other than 1 cannot act on it."""
    out = tmp_path / "never"
    for scale in ("4", "0.5", "0"):
        line = _one_error_line(CliRunner().invoke(main, ["sample", "--cfg-scale", scale, "--output-dir", str(out)]))
        assert "guidance_scale" in line and "unconditional" in line and "latte-clouds" in line
        assert not out.exists()


def _snapshot(folder):
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.rglob("*")) if path.is_file()}


def test_an_output_folder_that_cannot_be_made_is_one_error_naming_it(latte_fixture, fixtures_dir, tmp_path):
    """output_path below a regular file: one Error line naming the path and the reason, exit 2, before the
    model loads; the file in the way is untouched."""
    place = tmp_path / "place"
    place.mkdir()
    (place / "file").write_text("not a folder")
    before = _snapshot(place)
    out = place / "file" / "samples"
    result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                       "--output-dir", str(out)])
    line = _one_error_line(result)
    assert str(out) in line and "Not a directory" in line
    assert _snapshot(place) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder: only permissions could show it")
def test_an_output_folder_in_a_read_only_folder_is_one_error_naming_it(latte_fixture, fixtures_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "kept.txt").write_text("kept")
    before = _snapshot(locked)
    locked.chmod(0o500)
    try:
        out = locked / "samples"
        result = CliRunner().invoke(main, ["sample", "-c", _class_config(tmp_path, latte_fixture, fixtures_dir),
                                           "--output-dir", str(out)])
        line = _one_error_line(result)
        assert str(out) in line and "Permission denied" in line
    finally:
        locked.chmod(0o700)
    assert _snapshot(locked) == before
