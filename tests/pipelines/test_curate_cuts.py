"""Scene cuts of `latte curate` (pipelines/scenes.py) on the project's own videos: real H.264 files made by
concatenating different clips, so every cut and dissolve is at a known frame; and shots with no cut (a
continuous pan, a slow fade, a brief flash) where none may be found. 128 px clips, the analysis size."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from latte_toolkit.pipelines.curate import run_curate
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.synthetic import captioned_cloud_frames, texture_drift_frames

from media import write_mp4

SIZE = 128


def _shot(direction, colour, frames, seed, speed=1.0):
    return captioned_cloud_frames(direction, colour, frames, SIZE, speed, seed)


def _dissolve(a, b, length):
    """a, then `length` frames blending linearly from a's last frame to b's first, then b."""
    alpha = (np.arange(1, length + 1) / (length + 1))[:, None, None, None]
    blend = (a[-1:].astype(np.float64) * (1 - alpha) + b[:1].astype(np.float64) * alpha).round().astype(np.uint8)
    return np.concatenate([a, blend, b])


def _fade(frames, low):
    """The brightness held, ramped down to `low` over the middle 64 frames, held again."""
    ramp = np.concatenate([np.ones(8), np.linspace(1.0, low, 64), np.full(len(frames) - 72, low)])
    return (frames.astype(np.float64) * ramp[:, None, None, None]).round().astype(np.uint8)


def _flash(frames, first, length):
    frames = frames.copy()
    frames[first:first + length] = 255
    return frames


# name -> (frames, the scenes' frame ranges [(start, end)]; a dissolve's frames belong to neither scene)
VIDEOS = {
    "cuts.mp4": (lambda: np.concatenate([_shot("left", "blue", 40, 0), _shot("right", "orange", 40, 1),
                                         _shot("up", "blue", 40, 5), _shot("down", "green", 40, 2)]),
                 [(0, 40), (40, 80), (80, 120), (120, 160)]),
    "dissolve8.mp4": (lambda: _dissolve(_shot("left", "blue", 40, 0), _shot("right", "orange", 40, 1), 8),
                      [(0, 40), (48, 88)]),
    "dissolve12.mp4": (lambda: _dissolve(_shot("up", "grey", 40, 3), _shot("left", "green", 40, 4), 12),
                       [(0, 40), (52, 92)]),
    "dissolve16_same_sky.mp4": (lambda: _dissolve(_shot("left", "blue", 40, 0), _shot("down", "blue", 40, 7), 16),
                                [(0, 40), (56, 96)]),
    "pan4.mp4": (lambda: _shot("left", "blue", 96, 3, speed=4.0), [(0, 96)]),
    "pan8.mp4": (lambda: _shot("up", "grey", 96, 4, speed=8.0), [(0, 96)]),
    # every pixel textured: a slow drift looks like a blend of its neighbours (the flow tells it apart), a
    # fast one scores above cut_threshold between frames (the flow explains it)
    "texture_pan_0.5.mp4": (lambda: texture_drift_frames(64, 0.5, SIZE, SIZE, seed=8), [(0, 64)]),
    "texture_pan_8.mp4": (lambda: texture_drift_frames(64, 8.0, SIZE, SIZE, seed=9), [(0, 64)]),
    "slow_fade.mp4": (lambda: _fade(_shot("right", "orange", 80, 6), 0.35), [(0, 80)]),
    "flash.mp4": (lambda: _flash(_shot("left", "green", 60, 6), 30, 2), [(0, 60)]),
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuts")
    for name, (frames, _) in VIDEOS.items():
        write_mp4(root / "src" / name, frames(), fps=8)
    run_ingest([root / "src"], root / "ingest", workers=0, progress=False)
    # the videos share shots (the blue sky of seed 0 starts three): no duplicate check here
    summary = run_curate(root / "ingest", root / "curate", min_clip_frames=8, max_clip_frames=None, trim_frames=0,
                         dedup_distance=None, workers=0, progress=False)
    assert summary["failed"] == 0
    clips = {}
    for row in pq.read_table(root / "curate" / "clips.parquet").to_pylist():
        clips.setdefault(row["video_id"], []).append((row["start_frame"], row["end_frame"]))
    return clips


def test_every_hard_cut_is_found_within_one_frame(curated):
    """Measured: all three cuts at their exact frame (one between two blue skies of other clouds)."""
    found, expected = curated["cuts.mp4"], VIDEOS["cuts.mp4"][1]
    assert len(found) == len(expected)
    for (start, end), (true_start, true_end) in zip(found, expected):
        assert abs(start - true_start) <= 1 and abs(end - true_end) <= 1, (found, expected)


@pytest.mark.parametrize("name", ["dissolve8.mp4", "dissolve12.mp4", "dissolve16_same_sky.mp4"])
def test_no_clip_spans_both_sides_of_a_dissolve(curated, name):
    """Measured: each dissolve's blended frames are all dropped, with 1-3 frames of each scene beside
    them (the linear-blend check drops [first - 4, last + 4] of its run)."""
    (a_start, a_end), (b_start, b_end) = VIDEOS[name][1]
    found = curated[name]
    assert len(found) == 2, found
    for start, end in found:  # within one scene, never reaching into the other or the blend
        assert (a_start <= start and end <= a_end) or (b_start <= start and end <= b_end), (found, name)
    assert found[0][1] >= a_end - 4 and found[1][0] <= b_start + 4, found  # little of either scene lost


@pytest.mark.parametrize("name", ["pan4.mp4", "pan8.mp4", "texture_pan_0.5.mp4", "texture_pan_8.mp4",
                                  "slow_fade.mp4", "flash.mp4"])
def test_no_cut_inside_a_continuous_pan_a_slow_fade_or_a_brief_flash(curated, name):
    assert curated[name] == VIDEOS[name][1]
