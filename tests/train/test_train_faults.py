"""`latte train` under faults: a kill -9, a resume from any checkpoint, a damaged checkpoint, a resume
with another model, and keys or data that cannot train — each either goes on bit-identically or stops
with one `Error:` line (exit 2) before anything in the run folder changes."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import mindspore as ms

from latte_toolkit.cli import main
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.train.checkpoint import ResumeError, select_checkpoint
from latte_toolkit.train.config import KEYS, TrainConfigError, load_train_config

from media import snapshot, truncate

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")
# On the test cache (8 videos hold a 4-frame clip) batch 2 gives 4 steps per epoch, so checkpoints every
# 2 steps alternate mid-epoch (2, 6, 10) and end-of-epoch (4, 8, 12) states.
TINY = {"model_name": "Latte-S/2", "depth": 2, "hidden_size": 64, "num_heads": 4, "image_size": 32, "num_frames": 4,
        "dtype": "fp32", "amp_level": "O0", "train_data_type": "numpy", "start_learning_rate": 1e-3,
        "train_batch_size": 2, "use_ema": True, "ema_decay": 0.9, "step_mode": True, "ckpt_save_interval": 2,
        "ckpt_max_keep": 10, "seed": 0, "epochs": 100, "log_interval": 1}
STEPS_PER_EPOCH, LAST = 4, 12


def _config(folder, name="config.yaml", **overrides):
    path = folder / name
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return str(path)


def _state(folder):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(folder / "train_state.ckpt")).items()}


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def _assert_same_run(got, expected):
    """Bit-identical: every logged loss and every tensor of the last checkpoint (weights, EMA, Adam)."""
    assert _losses(got) == _losses(expected)
    a, b = _state(got / "ckpt" / f"step-{LAST:08d}"), _state(expected / "ckpt" / f"step-{LAST:08d}")
    assert set(a) == set(b)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _damage(path, at=0.5):
    """Overwrite 64 bytes inside the file (the size stays the same)."""
    data = bytearray(path.read_bytes())
    offset = int(len(data) * at)
    data[offset:offset + 64] = bytes(255 - b for b in data[offset:offset + 64])
    path.write_bytes(bytes(data))


def _assert_one_error_line(done, *names):
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def _cut(run, keep_through, target):
    """A copy of a run folder as a crash after checkpoint `keep_through` leaves it."""
    shutil.copytree(run, target)
    for folder in (target / "ckpt").iterdir():
        if int(folder.name.split("-")[1]) > keep_through:
            shutil.rmtree(folder)
    return target


@pytest.fixture(scope="module")
def reference(caches, tmp_path_factory):
    """The uninterrupted run: 12 steps, a checkpoint every 2 (all kept). Beside it (to save time) a
    `latte train` process with epoch-based checkpoints that the kill -9 test stops."""
    folder = tmp_path_factory.mktemp("reference")
    config = _config(folder, "epochs.yaml", step_mode=False, ckpt_save_interval=1)  # every epoch: steps 4, 8, ...
    killed = folder / "killed"
    process = subprocess.Popen([LATTE, "train", "-c", config, "--cache", str(caches["numpy"]), "--output-dir",
                                str(killed), "--max-steps", "40"], cwd=folder, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "GLOG_v": "3"})

    def kill_after_the_first_checkpoint():
        first = killed / "ckpt" / f"step-{STEPS_PER_EPOCH:08d}"
        deadline = time.monotonic() + 300
        while not first.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_first_checkpoint, daemon=True)
    killer.start()
    here = os.getcwd()
    os.chdir(folder)  # MindSpore's compile reports land in the working directory
    try:
        ms.set_context(mode=ms.GRAPH_MODE)
        result = CliRunner().invoke(main, ["train", "-c", _config(folder), "--cache", str(caches["numpy"]),
                                           "--output-dir", str(folder / "run"), "--max-steps", str(LAST)])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    run = folder / "run"
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == [f"step-{s:08d}" for s in range(2, LAST + 1, 2)]
    yield {"run": run, "cache": caches["numpy"], "killed": (process, killer, killed, config)}
    killer.join()
    process.wait()


def _resume(reference, run, config, *more):
    return CliRunner().invoke(main, ["train", "-c", config, "--cache", str(reference["cache"]), "--output-dir",
                                     str(run), "--max-steps", str(LAST), "--resume", *more])


def test_a_kill_9_after_an_end_of_epoch_checkpoint_then_resume_is_the_uninterrupted_run(reference):
    """Epoch-based checkpoints (the default) are all written after an epoch's last batch: the state
    (epoch e, position at the end) once crashed the resumed loader. A real training process is killed
    with SIGKILL after its first checkpoint; the resumed run equals the uninterrupted one."""
    process, killer, run, config = reference["killed"]  # started beside the reference run, see the fixture
    killer.join(timeout=300)
    assert process.wait(timeout=60) == -signal.SIGKILL
    saved = sorted(p.name for p in (run / "ckpt").iterdir() if p.name.startswith("step-"))
    newest = run / "ckpt" / saved[-1]
    state = json.loads((newest / "state.json").read_text())
    assert state["step"] in (4, 8) and state["step"] < LAST  # a checkpoint at an epoch's end, before the last step
    assert state["loader"]["position"] == STEPS_PER_EPOCH * TINY["train_batch_size"]
    result = _resume(reference, run, config)
    assert result.exit_code == 0, result.output
    _assert_same_run(run, reference["run"])


def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_resumes_bit_identically(reference, tmp_path,
                                                                                          caplog):
    """64 bytes of train_state.ckpt overwritten: its checksum names it, the run resumes from the
    checkpoint before it (step 2: mid-epoch) and ends as the uninterrupted run; the damaged folder is
    set aside, not loaded and not counted as a checkpoint."""
    run = _cut(reference["run"], 4, tmp_path / "run")
    bad = run / "ckpt" / "step-00000004" / "train_state.ckpt"
    _damage(bad)
    with caplog.at_level(logging.INFO):
        result = _resume(reference, run, _config(tmp_path))
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in message and "sha256" in message for message in warnings), warnings
    assert any("resumed from" in r.getMessage() and r.getMessage().split()[2].endswith("step-00000002")
               for r in caplog.records)
    set_aside = run / "ckpt" / "damaged-step-00000004" / "train_state.ckpt"
    assert set_aside.is_file() and set_aside.read_bytes() != (reference["run"] / "ckpt" / "step-00000004" /
                                                              "train_state.ckpt").read_bytes()
    _assert_same_run(run, reference["run"])
    np.testing.assert_array_equal(_state(run / "ckpt" / "step-00000004")["final_layer.linear.weight"],
                                  _state(reference["run"] / "ckpt" / "step-00000004")["final_layer.linear.weight"])


def test_checkpoint_selection_without_a_good_or_a_verifiable_checkpoint(reference, tmp_path, caplog):
    """No good checkpoint left: a ResumeError naming every damaged file. A checkpoint of the older code
    (no checksums.json) is accepted with a warning that it cannot be verified. A cut file is found by size."""
    run = _cut(reference["run"], 4, tmp_path / "run")
    folders = [run / "ckpt" / "step-00000002", run / "ckpt" / "step-00000004"]
    _damage(folders[1] / "train_state.ckpt")
    cut = folders[0] / "state.json"
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(ResumeError, match="no checkpoint passes") as refused:
        select_checkpoint([str(f) for f in folders])
    assert str(folders[1] / "train_state.ckpt") in str(refused.value) and str(cut) in str(refused.value)
    assert "bytes" in str(refused.value)
    (folders[0] / "checksums.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert select_checkpoint([str(f) for f in folders]) == (str(folders[0]), [
            (str(folders[1]), f"{folders[1] / 'train_state.ckpt'}: sha256 differs from checksums.json (damaged)")])
    assert any("cannot be verified" in r.getMessage() and str(folders[0]) in r.getMessage() for r in caplog.records)


def _corrupt_copy(cache, target):
    from latte_toolkit.datasets.cache import open_cache
    shutil.copytree(cache, target)
    entry = open_cache(target).entries["clip_2.mp4"]
    shard = target / "shards" / entry["shard"]
    _damage(shard / f"{entry['offset']}.mean.npy")
    return shard


def test_refusals_through_the_cli_are_one_error_line_and_leave_the_run_folder_as_it_was(reference, tmp_path):
    """Real `latte train` processes (run side by side to save time), each refused with exit 2, one
    `Error:` line naming the key or file, no traceback, and nothing written to its run folder:
    resume keys that differ from the checkpoint's, a damaged newest checkpoint with on_bad_checkpoint
    stop, clips longer than every video, heads that do not divide the width, a negative learning rate,
    and a corrupt shard with on_corrupt raise."""
    cache, cases = str(reference["cache"]), []

    def case(name, config, names, run=None, args=()):
        run = run or tmp_path / f"run_{name}"
        before = snapshot(run) if run.exists() else None
        command = [LATTE, "train", "-c", config, "--output-dir", str(run), *args]
        if "--cache" not in args:
            command += ["--cache", cache]
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "GLOG_v": "3"})
        cases.append((name, process, names, run, before))

    wide = _cut(reference["run"], LAST, tmp_path / "wide")
    case("resume_width", _config(tmp_path, "wide.yaml", hidden_size=96, ema_decay=0.5),
         ["hidden_size 64 (now 96)", "ema_decay 0.9 (now 0.5)"], wide, ["--resume", "--max-steps", "14"])
    damaged = _cut(reference["run"], LAST, tmp_path / "damaged")
    bad = damaged / "ckpt" / f"step-{LAST:08d}" / "ema.ckpt"
    _damage(bad, at=0.9)
    case("stop", _config(tmp_path, "stop.yaml", on_bad_checkpoint="stop"), [str(bad), "on_bad_checkpoint"], damaged,
         ["--resume", "--max-steps", "14"])
    case("num_frames", _config(tmp_path, "frames.yaml", num_frames=10, sample_stride=3),
         ["num_frames 10", "sample_stride 3", "longest video has 27 frames"])  # the longest: 9 + 3 * 6 frames
    case("num_heads", _config(tmp_path, "heads.yaml", num_heads=5), ["num_heads 5", "hidden_size 64"])
    case("learning_rate", _config(tmp_path, "lr.yaml", start_learning_rate=-1e-3), ["start_learning_rate", "-0.001"])
    shard = _corrupt_copy(reference["cache"], tmp_path / "corrupt")
    case("corrupt_shard", _config(tmp_path, "corrupt.yaml", on_corrupt="raise"), [shard.name, "on_corrupt: raise"],
         args=["--cache", str(tmp_path / "corrupt")])
    for name, process, names, run, before in cases:
        stdout, stderr = process.communicate(timeout=300)
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        line = _assert_one_error_line(done, *names)
        if name == "resume_width":
            assert "num_heads" not in line and "max_steps" not in line  # unchanged / a key a resume may change
        if before is None:
            assert not run.exists(), name
        else:
            assert snapshot(run) == before, name


@pytest.mark.parametrize("key,value", [
    ("start_learning_rate", 0), ("start_learning_rate", -1e-4), ("start_learning_rate", float("nan")),
    ("end_learning_rate", -1e-6), ("max_steps", 0), ("max_steps", -5), ("epochs", 0), ("warmup_steps", -1),
    ("decay_steps", -1), ("train_batch_size", 0), ("gradient_accumulation_steps", 0), ("class_dropout_prob", 1.5),
    ("class_dropout_prob", -0.1), ("ema_decay", 1.01), ("weight_decay", -0.01), ("optim_eps", 0),
    ("max_grad_norm", -1.0), ("init_loss_scale", float("inf")), ("loss_scale_factor", 1), ("scale_window", 0),
    ("seed", -1), ("seed", 2 ** 32), ("hidden_size", 0), ("num_heads", -4), ("depth", 0), ("num_frames", 0),
    ("sample_stride", 0), ("ckpt_max_keep", 0), ("num_parallel_workers", 0), ("sd_scale_factor", 0.0),
])
def test_numeric_keys_out_of_range_are_refused_by_name(tmp_path, key, value):
    with pytest.raises(TrainConfigError, match=rf"config.yaml: {key} must be .*, got "):
        load_train_config(_config(tmp_path, **{key: value}, data_folder="x"))
    with pytest.raises(TrainConfigError, match=rf"command line: {key} must be "):
        load_train_config(None, {key: value, "data_folder": "x"})


def test_every_numeric_key_has_a_range_and_the_key_list_shows_the_new_key():
    unranged = [k.name for k in KEYS if (int in k.types or float in k.types) and k.range is None]
    assert unranged == ["max_rowsize"]  # MindONE's shared-memory size: no effect here (reported)
    for k in KEYS:
        if k.range is not None:
            assert k.default is None or k.default in k.range, k.name
    listed = CliRunner().invoke(main, ["train", "--keys"])
    assert listed.exit_code == 0
    line = next(line for line in listed.output.splitlines() if line.startswith("on_bad_checkpoint "))
    assert "['previous']" in line and "stop" in line
    assert load_train_config(None, {"data_folder": "x"})["on_bad_checkpoint"] == "previous"
    with pytest.raises(TrainConfigError, match="on_bad_checkpoint must be one of previous, stop"):
        load_train_config(None, {"data_folder": "x", "on_bad_checkpoint": "ignore"})


def test_an_output_dir_below_a_regular_file_is_one_error_naming_it_and_changes_nothing(tmp_path):
    """`latte train --output-dir` below a file: one Error line naming the path and the reason, exit 2,
    before any work; the file in the way and the cache stay as they were."""
    from latte_toolkit.tools.fixtures import write_synthetic_cache
    cache = write_synthetic_cache(tmp_path / "cache", videos=2, frames=8, latent=4, shard_videos=2, chunk_frames=4)
    blocker = tmp_path / "place" / "file"
    blocker.parent.mkdir()
    blocker.write_text("not a folder")
    before = {folder: snapshot(folder) for folder in (blocker.parent, tmp_path / "cache")}
    run = blocker / "run"
    done = subprocess.run([LATTE, "train", "-c", _config(tmp_path, image_size=32), "--cache", str(cache),
                           "--output-dir", str(run), "--max-steps", "1"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "GLOG_v": "3"}, timeout=300)
    _assert_one_error_line(done, str(run), "Not a directory")
    assert {folder: snapshot(folder) for folder in before} == before


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_a_shard_truncated_while_training_runs_is_one_error_naming_it(caches, tmp_path, fmt):
    """The loader reads in threads MindSpore runs; the reader's own error reaches the user (one Error
    line naming the shard, exit 2), not MindSpore's RuntimeError with its traceback inside, and the
    checkpoints written before stay as they were."""
    cache = tmp_path / "cache"
    shutil.copytree(caches[fmt], cache)
    run = tmp_path / "run"
    process = subprocess.Popen([LATTE, "train", "-c", _config(tmp_path, train_data_type=fmt), "--cache", str(cache),
                                "--output-dir", str(run), "--max-steps", "400"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "GLOG_v": "3"})
    first, deadline = run / "ckpt" / "step-00000002" / "checksums.json", time.monotonic() + 300  # written last
    while not first.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    for shard in (cache / "shards").iterdir():  # the loader checked them when it started: now half of each
        for path in shard.iterdir():
            os.truncate(path, path.stat().st_size // 2)
    # the published step folders only: a staging folder may be renamed while the run goes on
    written = {f"{folder.name}/{path}": value for folder in sorted((run / "ckpt").glob("step-*"))
               for path, value in snapshot(folder).items()}
    stdout, stderr = process.communicate(timeout=300)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    line = _assert_one_error_line(done, str(cache / "shards"), "cannot be read", "latte cache")
    assert "RuntimeError" not in stderr and "Traceback" not in stderr and len(line) < 1000
    after = snapshot(run / "ckpt")
    assert written and {path: after.get(path) for path in written} == written


def test_a_video_that_no_longer_decodes_while_training_from_videos_is_one_error_naming_it(caches, tmp_path):
    """The uncached path decodes in MindSpore's GeneratorDataset threads: a video cut after ingest is
    one Error line naming the file (exit 2), not MindSpore's RuntimeError."""
    source = tmp_path / "videos"
    shutil.copytree(caches["root"] / "src", source, ignore=shutil.ignore_patterns("sky"))
    run_ingest([source], tmp_path / "ingest", workers=0, progress=False)
    for path in source.iterdir():  # every clip: the first batch reads one
        truncate(path, 0.4)
    before = snapshot(tmp_path / "ingest")
    config = _config(tmp_path, train_data_type="video_file", data_folder=str(tmp_path / "ingest"),
                     vae_checkpoint=str(caches["vae"]))
    done = subprocess.run([LATTE, "train", "-c", config, "--output-dir", str(tmp_path / "run"), "--max-steps", "2"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"},
                          timeout=600)
    line = _assert_one_error_line(done, str(source), "the file changed since latte ingest checked it")
    assert "RuntimeError" not in done.stderr and len(line) < 1000
    assert snapshot(tmp_path / "ingest") == before and not (tmp_path / "run" / "ckpt").exists()
