"""`latte bench learn`: the ladder's checks are honest on real clips (the clips themselves pass memorise,
their frames shuffled in time fail it), a rung runs end to end at a tiny size, and bad requests are refused."""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import BIN
from latte_toolkit.datasets.video import center_crop_resize, read_frames_at, read_manifest
from latte_toolkit.pipelines.config import INGEST_KEYS, run_ingest_job
from latte_toolkit.tools.bench.learn import (CLASS_LR_SCALE, MEMORISE_CLIPS, RUNGS, check_class_colour, check_memorise,
                                             check_shuffled_control, colour_clips, memorise_clips)


def _ingested(folder, write):
    videos = folder / "videos"
    videos.mkdir(parents=True)
    listing = write(str(videos))
    run_ingest_job(INGEST_KEYS.load(None, {"sources": [listing], "out": str(folder / "ingest"), "num_frames": 8,
                                           "workers": 0}), False)
    return folder


def _clips_as_samples(folder, count=16, start=0, shuffle=False):
    """The ingested videos' frames as if sampled: sample i is class i % 4's video (read from frame
    `start`), optionally with its frames in a random order."""
    rows = sorted(read_manifest(str(folder / "ingest")), key=lambda row: (row["label"], row["video_id"]))
    by_class = {}
    for row in rows:
        by_class.setdefault(row["label"], []).append(row)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        row = by_class[i % 4][(i // 4) % len(by_class[i % 4])]
        frames = np.stack([center_crop_resize(f, 64) for f in read_frames_at(row["path"], row["kind"], range(start, start + 8))])
        samples.append(frames[rng.permutation(8)] if shuffle else frames)
    return np.stack(samples)


def test_the_memorise_checks_pass_the_clips_themselves_and_fail_them_shuffled(tmp_path):
    work = _ingested(tmp_path / "memorise", memorise_clips)
    assert len(read_manifest(str(work / "ingest"))) == len(MEMORISE_CLIPS)
    clips = _clips_as_samples(work, start=8)  # other frames than the reference's: the same drift
    memorised = check_memorise(clips, str(work))
    assert memorised["passed"] and memorised["drift_matched"] == memorised["colour_matched"] == 16, memorised
    shuffled = _clips_as_samples(work, shuffle=True)
    assert not check_memorise(shuffled, str(work))["passed"]
    assert check_shuffled_control(shuffled, str(work))["passed"]  # the control's samples must fail the drift
    assert not check_shuffled_control(clips, str(work))["passed"]
    # the clips of one class labelled as the next: every colour is wrong
    relabelled = np.roll(clips, 1, axis=0)
    assert check_memorise(relabelled, str(work))["colour_matched"] == 0


def test_class_colour_centroids_tell_the_real_clips_apart(tmp_path):
    work = _ingested(tmp_path / "colour", colour_clips)
    figures = check_class_colour(_clips_as_samples(work), str(work))
    assert figures["passed"] and figures["colour_matched"] == 16, figures
    assert not check_class_colour(np.roll(_clips_as_samples(work), 1, axis=0), str(work))["passed"]


@pytest.mark.slow
def test_a_rung_runs_end_to_end_at_a_tiny_size(tmp_path):
    work = tmp_path / "ladder"
    run = subprocess.run([os.path.join(BIN, "latte"), "bench", "learn", "--rung", "memorise", "--steps", "2", "--work", str(work)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rung = json.loads(run.stdout.strip().splitlines()[-1])["rungs"]["memorise"]
    assert rung["steps"] == 2 and isinstance(rung["passed"], bool) and rung["of"] == 16, rung
    assert 0 < rung["minutes"] <= rung["budget_minutes"] == 10.0
    assert len(list((work / "memorise" / "samples-memorise").glob("sample_*.gif"))) == 16
    state = json.loads(next((work / "memorise" / "train" / "ckpt").glob("step-*/state.json")).read_text())
    assert state["config"]["prediction_type"] == "v_prediction" and state["config"]["ema_warmup"]
    assert state["config"]["condition_lr_scale"] == CLASS_LR_SCALE > 1  # the class table's own rate


@pytest.mark.parametrize("args, needle", [(["--rung", "colour"], "--rung 'colour'"),
                                          (["--budget-minutes", "1"], "at least 3 minutes"),
                                          (["--budget-minutes", "0"], "budget-minutes")])
def test_bad_ladder_requests_are_one_error_and_write_nothing(tmp_path, args, needle):
    work = tmp_path / "ladder"
    run = subprocess.run([os.path.join(BIN, "latte"), "bench", "learn", *args, "--work", str(work)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("Error:") == 1 and needle in run.stderr, run.stderr
    assert not work.exists()
    assert set(RUNGS) >= {"memorise", "shuffled-control", "class-colour", "unconditional-motion", "text-colour",
                          "text-direction"}
