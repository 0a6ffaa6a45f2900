"""One rule for every command, over a table of user errors: one `Error:` line on stderr that names the
input or key, exit code 2, no traceback, and nothing written where the command would have written.
(Bad inputs inside a job are failure rows, tested with each stage; these are the errors of what the user
typed or pointed at.)"""
import json
import os
import shutil
import subprocess

import click
import pytest
import yaml
from click.testing import CliRunner

from latte_core.errors import DiskFull, UserError
from latte_toolkit.cli import LatteGroup, main
from latte_toolkit.pipelines.ingest import run_ingest

from media import moving_square_frames, unmount, write_mp4

TINY_TRAIN = {"model_name": "Latte-S/2", "depth": 2, "hidden_size": 64, "num_heads": 4, "image_size": 32,
              "num_frames": 4, "amp_level": "O0", "train_batch_size": 2, "max_steps": 1, "seed": 0}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("cli_errors")
    write_mp4(root / "src" / "clip.mp4", moving_square_frames(9, height=40, width=56))
    run_ingest([root / "src"], root / "ingest", workers=0, progress=False)
    (root / "empty").mkdir()
    vae_without_config = root / "vae_without_config"
    shutil.copytree(fixtures_dir / "vae" / "vae_small_diffusers", vae_without_config)
    (vae_without_config / "config.json").unlink()
    return {"root": root, "src": root / "src", "ingest": root / "ingest", "empty": root / "empty",
            "vae": fixtures_dir / "vae" / "vae_small_diffusers", "vae_without_config": vae_without_config,
            "latte": fixtures_dir / "latte" / "latte_class_small.safetensors",
            "i3d": fixtures_dir / "fvd" / "i3d_random_400.pt"}


def _yaml(root, name, mapping):
    path = root / name
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def _not_utf8(root, name):
    path = root / name
    path.write_bytes(b"\xff\xfe num_frames: 4\n")
    return str(path)


def _train_yaml(w, name, **overrides):
    return _yaml(w["root"], name, {**TINY_TRAIN, "data_folder": str(w["empty"]), **overrides})


# (case id, argv from the workspace and the case's fresh output path, text the Error line must hold)
CASES = [
    ("ingest-missing-source", lambda w, out: ["ingest", "--source", str(w["root"] / "nope"), "--out", out], "nope"),
    ("ingest-no-out", lambda w, out: ["ingest", "--source", str(w["src"])], "--out"),
    ("ingest-negative-workers", lambda w, out: ["ingest", "--source", str(w["src"]), "--out", out, "--workers", "-1"],
     "--workers"),
    ("ingest-zero-frames", lambda w, out: ["ingest", "--source", str(w["src"]), "--out", out, "--num-frames", "0"],
     "--num-frames"),
    ("ingest-unknown-config-key", lambda w, out: ["ingest", "-c", _yaml(w["root"], "i1.yaml", {"frobnicate": 1}),
                                                  "--out", out], "frobnicate"),
    ("ingest-config-wrong-type", lambda w, out: ["ingest", "-c", _yaml(w["root"], "i2.yaml", {"num_frames": "x"}),
                                                 "--source", str(w["src"]), "--out", out], "num_frames"),
    ("ingest-config-timeout-out-of-range", lambda w, out: ["ingest", "-c", _yaml(w["root"], "i3.yaml", {
        "decode_timeout": 0}), "--source", str(w["src"]), "--out", out], "decode_timeout"),
    ("ingest-config-seed-spelling-wrong-type", lambda w, out: ["ingest", "-c", _yaml(w["root"], "i4.yaml", {
        "data_config": {"sample_n_frames": 2.5}}), "--source", str(w["src"]), "--out", out], "num_frames"),
    ("ingest-config-not-utf8", lambda w, out: ["ingest", "-c", _not_utf8(w["root"], "i5.yaml"), "--source",
                                               str(w["src"]), "--out", out], "i5.yaml: unreadable config (not UTF-8"),
    ("cache-no-manifest", lambda w, out: ["cache", "--vae", str(w["vae"]), "--out", out], "--manifest"),
    ("cache-negative-resume-index", lambda w, out: ["cache", "--manifest", str(w["ingest"]), "--vae", str(w["vae"]),
                                                    "--out", out, "--resume_cache_index", "-1"],
     "--resume_cache_index"),
    ("cache-config-unknown-format", lambda w, out: ["cache", "-c", _yaml(w["root"], "c3.yaml", {
        "cache_file_type": "hdf5"}), "--manifest", str(w["ingest"]), "--vae", str(w["vae"]), "--out", out], "format"),
    ("cache-missing-manifest", lambda w, out: ["cache", "--manifest", str(w["root"] / "nope"), "--vae", str(w["vae"]),
                                               "--out", out], "nope"),
    ("cache-not-a-manifest", lambda w, out: ["cache", "--manifest", str(w["empty"]), "--vae", str(w["vae"]),
                                             "--out", out], "empty"),
    ("cache-vae-without-config", lambda w, out: ["cache", "--manifest", str(w["ingest"]), "--vae",
                                                 str(w["vae_without_config"]), "--out", out], "config.json"),
    ("cache-negative-workers", lambda w, out: ["cache", "--manifest", str(w["ingest"]), "--vae", str(w["vae"]),
                                               "--out", out, "--workers", "-1"], "--workers"),
    ("cache-config-negative-workers", lambda w, out: ["cache", "-c", _yaml(w["root"], "c2.yaml", {"workers": -1}),
                                                      "--manifest", str(w["ingest"]), "--vae", str(w["vae"]),
                                                      "--out", out], "workers"),
    ("cache-unknown-format", lambda w, out: ["cache", "--manifest", str(w["ingest"]), "--vae", str(w["vae"]),
                                             "--out", out, "--format", "hdf5"], "--format"),
    ("cache-unknown-config-key", lambda w, out: ["cache", "-c", _yaml(w["root"], "c1.yaml", {"vae_pth": "x"}),
                                                 "--out", out], "vae_pth"),
    ("report-not-a-cache", lambda w, out: ["report", str(w["empty"])], "empty"),
    ("report-config-unknown-key", lambda w, out: ["report", "-c", _yaml(w["root"], "r1.yaml", {"verfiy": True})],
     "verfiy"),
    ("train-unknown-key", lambda w, out: ["train", "-c", _train_yaml(w, "t1.yaml", learning_rat=1e-4),
                                          "--output-dir", out], "learning_rat"),
    ("train-config-not-utf8", lambda w, out: ["train", "-c", _not_utf8(w["root"], "t7.yaml"), "--output-dir", out],
     "t7.yaml: unreadable config (not UTF-8"),
    ("sample-config-not-utf8", lambda w, out: ["sample", "-c", _not_utf8(w["root"], "s2.yaml"), "--output-dir", out],
     "s2.yaml: unreadable config (not UTF-8"),
    ("train-negative-learning-rate", lambda w, out: ["train", "-c", _train_yaml(w, "t2.yaml", start_learning_rate=-1e-4),
                                                     "--output-dir", out], "start_learning_rate"),
    ("train-heads-do-not-divide-width", lambda w, out: ["train", "-c", _train_yaml(w, "t3.yaml", num_heads=5),
                                                        "--output-dir", out], "num_heads"),
    ("train-video-folder-bad-heads", lambda w, out: ["train", "-c", _train_yaml(
        w, "t6.yaml", num_heads=5, train_data_type="video_file", data_folder=str(w["src"]), vae_checkpoint=str(w["vae"])),
        "--output-dir", out], "num_heads"),
    ("train-not-a-cache", lambda w, out: ["train", "-c", _train_yaml(w, "t4.yaml"), "--cache", str(w["empty"]),
                                          "--output-dir", out], "empty"),
    ("train-use-parallel-not-a-bool", lambda w, out: ["train", "-c", _train_yaml(w, "t5.yaml"), "--use_parallel",
                                                      "maybe", "--output-dir", out], "maybe"),
    ("train-vae-not-an-ingest-folder", lambda w, out: ["train-vae", "--manifest", str(w["empty"]), "--out", out],
     "manifest.parquet"),
    ("train-vae-zero-learning-rate", lambda w, out: ["train-vae", "--manifest", str(w["ingest"]), "--out", out,
                                                     "--lr", "0"], "--lr"),
    ("train-vae-bad-channels", lambda w, out: ["train-vae", "--manifest", str(w["ingest"]), "--out", out,
                                               "--block-out-channels", "32,x"], "--block-out-channels"),
    ("train-vae-decoder-only-without-init", lambda w, out: ["train-vae", "--manifest", str(w["ingest"]), "--out", out,
                                                           "--decoder-only"], "decoder_only needs init_vae"),
    ("train-vae-init-not-a-vae", lambda w, out: ["train-vae", "--manifest", str(w["ingest"]), "--out", out,
                                                 "--init-vae", str(w["empty"]), "--decoder-only"], "empty"),
    ("train-vae-config-negative-kl", lambda w, out: ["train-vae", "-c", _yaml(w["root"], "v1.yaml", {"kl_weight": -1}),
                                                     "--manifest", str(w["ingest"]), "--out", out], "kl_weight"),
    ("sample-missing-checkpoint", lambda w, out: ["sample", "--checkpoint", str(w["root"] / "nope.ckpt"),
                                                  "--output-dir", out], "nope.ckpt"),
    ("sample-zero-steps", lambda w, out: ["sample", "--steps", "0", "--output-dir", out], "--steps"),
    ("sample-unknown-sampler", lambda w, out: ["sample", "--sampler", "euler", "--output-dir", out], "--sampler"),
    ("sample-bad-class-labels", lambda w, out: ["sample", "--class-labels", "1,x", "--output-dir", out],
     "--class-labels"),
    ("sample-negative-seed", lambda w, out: ["sample", "--seed", "-1", "--output-dir", out], "--seed"),
    ("sample-config-zero-fps", lambda w, out: ["sample", "-c", _yaml(w["root"], "s1.yaml", {"fps": 0}),
                                               "--output-dir", out], "fps"),
    ("quality-no-samples", lambda w, out: ["quality", str(w["empty"]), "--manifest", str(w["ingest"]), "--vae",
                                           str(w["vae"])], "sample_"),
    ("convert-latte-missing-source", lambda w, out: ["convert", "latte", "--source", str(w["root"] / "nope.pt"),
                                                     "--target", out + ".ckpt"], "nope.pt"),
    ("convert-latte-wrong-variant", lambda w, out: ["convert", "latte", "--source", str(w["latte"]), "--target",
                                                    out + ".ckpt", "--model", "Latte-M/2"], "Latte-M/2"),
    ("convert-vae-without-config", lambda w, out: ["convert", "vae", "--source", str(w["vae_without_config"]),
                                                   "--target", out + ".ckpt", "--config",
                                                   str(w["root"] / "nope.json")], "nope.json"),
    ("demo-no-videos", lambda w, out: ["demo", "--out", out, "--videos", "0"], "--videos"),
    ("demo-config-unknown-key", lambda w, out: ["demo", "-c", _yaml(w["root"], "d1.yaml", {"vidoes": 3}),
                                                "--out", out], "vidoes"),
    ("eval-fvd-missing-i3d", lambda w, out: ["eval", "fvd", "--real", str(w["src"]), "--fake", str(w["src"]), "--i3d",
                                             str(w["root"] / "nope.pt"), "--out", out], "nope.pt"),
    ("eval-fvd-eight-frames", lambda w, out: ["eval", "fvd", "--real", str(w["src"]), "--fake", str(w["src"]),
                                              "--i3d", str(w["i3d"]), "--frames", "8", "--out", out], "--frames"),
    ("eval-fvd-no-videos", lambda w, out: ["eval", "fvd", "--real", str(w["empty"]), "--fake", str(w["src"]),
                                           "--i3d", str(w["i3d"]), "--out", out], "holds no videos"),
    ("eval-fvd-without-msrun", lambda w, out: ["eval", "fvd", "--real", str(w["src"]), "--fake", str(w["src"]),
                                               "--i3d", str(w["i3d"]), "--out", out, "--use_parallel", "True"],
     "use_parallel"),
    ("bench-step-one-step", lambda w, out: ["bench", "step", "--steps", "1"], "--steps"),
    ("bench-step-unknown-variant", lambda w, out: ["bench", "step", "--model", "Latte-M/2"], "Latte-M/2"),
    ("bench-step-odd-depth", lambda w, out: ["bench", "step", "--depth", "3"], "--depth 3"),
    ("bench-vae-odd-size", lambda w, out: ["bench", "vae", "--size", "7"], "--size"),
    ("bench-loader-missing-cache", lambda w, out: ["bench", "loader", str(w["root"] / "nope")], "nope"),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_a_user_error_is_one_error_line_naming_the_input_and_exit_2(workspace, tmp_path, case):
    _, argv, named = case
    out = tmp_path / "out"
    result = CliRunner().invoke(main, argv(workspace, str(out)))
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))
    assert not out.exists() and not (tmp_path / "out.ckpt").exists(), "a refused command wrote its output"


@pytest.mark.parametrize("argv", [["bench", "step", "--steps", "2"], ["bench", "forward", "--frames", "2"],
                                  ["bench", "vae", "--size", "64", "--batch", "1"]], ids=["step", "forward", "vae"])
def test_an_unknown_gemm_backend_is_one_error_line_before_the_benchmark_process_starts(monkeypatch, argv):
    # these benchmarks build their models in a child process; its UserError would reach the user as a traceback
    monkeypatch.setenv("LATTE_GEMM", "mkl")
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stderr.splitlines() == ["Error: LATTE_GEMM must be one of onednn, openblas, not 'mkl'"]


@pytest.mark.parametrize("raised, code, text", [
    (UserError("frames.csv: no 'video' column"), 2, "Error: frames.csv: no 'video' column"),
    (DiskFull("no space left on /data"), 1, "Error: no space left on /data"),
    (KeyError("format"), 1, "Error: unexpected KeyError: 'format' (run `latte -v ...` for the traceback)"),
])
def test_the_error_rule_by_kind_and_the_traceback_only_with_verbose(raised, code, text):
    @click.group(cls=LatteGroup)
    @click.option("-v", "--verbose", is_flag=True)
    @click.pass_context
    def cli(ctx, verbose):
        ctx.obj = {"verbose": verbose}

    @cli.command()
    def job():
        raise raised

    result = CliRunner().invoke(cli, ["job"])
    assert result.exit_code == code and result.stderr.splitlines() == [text]
    verbose = CliRunner().invoke(cli, ["-v", "job"])
    if code == 1 and not isinstance(raised, DiskFull):  # a bug: -v lets its traceback through
        assert verbose.exception is raised
    else:  # an error of the user's or of the machine: the same one line with -v
        assert verbose.exit_code == code and verbose.stderr.splitlines() == [text]


# (command id, argv with the output folder `out`): every command that creates an output folder
OUTPUT_FOLDERS = [
    ("ingest", lambda w, out: ["ingest", "--source", str(w["src"]), "--out", out]),
    ("curate", lambda w, out: ["curate", "--manifest", str(w["ingest"]), "--out", out]),
    ("cache", lambda w, out: ["cache", "--manifest", str(w["ingest"]), "--vae", str(w["vae"]), "--out", out]),
    ("train-vae", lambda w, out: ["train-vae", "--manifest", str(w["ingest"]), "--out", out, "--steps", "2"]),
    ("sample", lambda w, out: ["sample", "--output-dir", out, "--steps", "2", "--num-videos", "1"]),
    ("demo", lambda w, out: ["demo", "--out", out, "--videos", "2"]),
    ("bench-learn", lambda w, out: ["bench", "learn", "--work", out, "--rung", "all"]),
    ("eval-fvd", lambda w, out: ["eval", "fvd", "--real", str(w["src"]), "--fake", str(w["src"]), "--i3d", str(w["i3d"]),
                                 "--save-stats", os.path.join(out, "real.npz")]),
]


@pytest.mark.parametrize("case", OUTPUT_FOLDERS, ids=[case[0] for case in OUTPUT_FOLDERS])
def test_an_output_folder_below_a_regular_file_is_one_error_naming_it(workspace, tmp_path, case):
    """The folder cannot be made (a file is in the way): one Error line naming the path, exit 2, before
    any work, and the file in the way unchanged."""
    _, argv = case
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    stat = blocker.stat()
    out = blocker / "out"
    result = CliRunner().invoke(main, argv(workspace, str(out)))
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(errors) == 1 and str(blocker) in errors[0], result.stderr
    assert "Traceback" not in result.output and "unexpected" not in errors[0]
    assert blocker.read_text() == "not a folder" and blocker.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_an_output_folder_on_a_read_only_mount_is_one_error_naming_it(workspace, tmp_path):
    """A read-only mount (root ignores a 0o500 folder's mode, not a read-only mount): every command that
    makes an output folder, train included, is one Error line naming the path and the reason, exit 2,
    and the file already on the mount is unchanged."""
    from latte_toolkit.tools.fixtures import write_synthetic_cache
    cache = write_synthetic_cache(tmp_path / "cache", videos=2, frames=8, latent=4, shard_videos=2, chunk_frames=4)
    disk = tmp_path / "mount"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "kept.txt").write_text("kept")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        stat = (disk / "kept.txt").stat()
        cases = OUTPUT_FOLDERS + [("train", lambda w, out: ["train", "-c", _train_yaml(w, "ro.yaml"), "--cache",
                                                             str(cache), "--output-dir", out])]
        for name, argv in cases:
            out = disk / name
            result = CliRunner().invoke(main, argv(workspace, str(out)))
            errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
            assert result.exit_code == 2, (name, result.exit_code, result.output)
            assert len(errors) == 1 and str(out) in errors[0] and "Read-only file system" in errors[0], result.stderr
        assert sorted(p.name for p in disk.iterdir()) == ["kept.txt"]
        assert (disk / "kept.txt").read_text() == "kept" and (disk / "kept.txt").stat().st_mtime_ns == stat.st_mtime_ns
    finally:
        unmount(disk)
