"""`latte curate`'s clip measures and filters (pipelines/measures.py): motion as optical flow on
textured drifts of known speed written as H.264, the static / too much motion / too small filters, and
letterbox bars dropped, cropped or kept."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from latte_toolkit.pipelines.curate import run_curate
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.synthetic import texture_drift_frames

from media import write_mp4

FRAMES = 17  # 8 measured pairs (frames 0-1, 2-3, ..., 14-15)


def drift_frames(speed, height=128, width=128, seed=0):
    return texture_drift_frames(FRAMES, speed, height, width, seed)


def _letterboxed(bar):
    frames = drift_frames(1.0, height=128 - 2 * bar, width=160, seed=5)
    return np.pad(frames, ((0, 0), (bar, bar), (0, 0), (0, 0)))


SPEEDS = {"static.mp4": 0.0, "drift_0.5.mp4": 0.5, "drift_2.mp4": 2.0, "drift_8.mp4": 8.0}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion")
    for i, (name, speed) in enumerate(SPEEDS.items()):
        write_mp4(root / "src" / name, drift_frames(speed, seed=i))
    write_mp4(root / "src" / "small_96.mp4", drift_frames(2.0, height=96, width=96, seed=4))
    write_mp4(root / "src" / "letterbox_16.mp4", _letterboxed(16))
    run_ingest([root / "src"], root / "ingest", workers=0, progress=False)
    return root


def _curate(root, name, **keys):
    keys = {"min_clip_frames": 8, "min_motion": 0.0, **keys}
    run_curate(root / "ingest", root / name, workers=0, progress=False, **keys)
    clips = {row["video_id"]: row for row in pq.read_table(root / name / "clips.parquet").to_pylist()}
    dropped = {row["video_id"]: row for row in pq.read_table(root / name / "filtered.parquet").to_pylist()}
    return clips, dropped


def test_motion_is_the_drift_in_pixels_per_frame(ingested):
    """At the analysis size (these clips are 128 px, so the drift itself): a static clip <= 0.05 px/frame,
    drifts within 15 % (measured 0.0; 0.55, 2.0, 8.0: DIS overestimates sub-pixel drifts by ~10 %)."""
    clips, dropped = _curate(ingested, "all", letterbox="keep")
    assert not dropped
    assert all((row["start_frame"], row["end_frame"]) == (0, FRAMES) for row in clips.values()), clips
    assert clips["static.mp4"]["motion"] <= 0.05
    for name, speed in SPEEDS.items():
        if speed:
            assert abs(clips[name]["motion"] - speed) <= 0.15 * speed, (name, clips[name]["motion"])


def test_static_fast_and_small_clips_are_dropped_with_their_score(ingested):
    clips, dropped = _curate(ingested, "filters", min_motion=0.25, max_motion=6.0, min_size=100, letterbox="keep")
    assert sorted(clips) == ["drift_0.5.mp4", "drift_2.mp4", "letterbox_16.mp4"]
    assert {name: row["reason"] for name, row in dropped.items()} == {
        "static.mp4": "static", "drift_8.mp4": "too much motion", "small_96.mp4": "too small"}
    assert dropped["static.mp4"]["score"] == dropped["static.mp4"]["motion"] <= 0.05
    assert dropped["drift_8.mp4"]["score"] == dropped["drift_8.mp4"]["motion"] > 6.0
    assert dropped["small_96.mp4"]["score"] == 96.0


@pytest.mark.parametrize("mode", ["drop", "crop", "keep"])
def test_letterbox_bars_are_dropped_cropped_or_kept(ingested, mode):
    clips, dropped = _curate(ingested, mode, letterbox=mode)
    if mode == "drop":
        assert "letterbox_16.mp4" not in clips
        assert (dropped["letterbox_16.mp4"]["reason"], dropped["letterbox_16.mp4"]["score"]) == ("letterbox", 16.0)
        return
    row = clips["letterbox_16.mp4"]
    expected = (16, 0, 96, 160) if mode == "crop" else (0, 0, 128, 160)
    assert (row["crop_top"], row["crop_left"], row["height"], row["width"]) == expected
    assert all(clips[name]["crop_top"] == clips[name]["crop_left"] == 0 for name in SPEEDS)  # no bars found
