"""`latte quality`'s drift measure: phase correlation between consecutive frames, on clips whose shift
is known, and the check it adds (still pictures that flicker fail it, real clips pass it)."""
import csv
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import BIN
from latte_toolkit.datasets.video import read_frames_at, read_manifest, write_gif
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.pretrained import PRETRAINED
from latte_core.vae import load_vae
from latte_toolkit.inference.quality import (LATENT_STD_RATIO, drift_direction, drift_velocity, encode_frames,
                                               frame_shifts, velocity_matches)
from latte_toolkit.tools.synthetic import (
    CAPTION_DIRECTIONS, CLOUD_SPEED, DIRECTIONS, SKY_COLOURS, captioned_cloud_frames, cloud_frames, write_captioned_cloud_dataset,
    write_cloud_dataset)


def _shifted_texture(velocity, frames=8, size=64, seed=0):
    """A random texture (detail down to ~10 px) moved by exactly `velocity` px per frame (a Fourier
    shift, so sub-pixel shifts carry no interpolation blur), seen through a size x size window: (F, 1, H, W)."""
    canvas = 4 * size
    fy, fx = np.fft.fftfreq(canvas)[:, None], np.fft.fftfreq(canvas)[None, :]
    spectrum = np.fft.fft2(np.random.default_rng(seed).random((canvas, canvas))) * np.exp(-(fx ** 2 + fy ** 2) / 0.02)
    dx, dy = velocity
    return np.stack([np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (fx * dx + fy * dy) * i)).real[:size, :size]
                     for i in range(frames)])[:, None]


@pytest.mark.parametrize("velocity", [(0.3, 0.0), (-0.3, 0.0), (0.0, 0.55), (0.0, -0.55), (1.25, 0.0),
                                      (-2.7, 0.0), (0.0, 3.4), (0.6, -0.8)])
def test_exact_shifts_are_recovered_to_a_few_hundredths_of_a_pixel(velocity):
    shifts = frame_shifts(_shifted_texture(velocity))
    # Measured error <= 2.4 % of the speed over 0.1-3.5 px/frame in both axes; 5 % + 0.01 px leaves room
    # for the texture's draw while still failing a whole-pixel estimate (0.3 would read 0) or a sign error.
    bound = 0.05 * np.hypot(*velocity) + 0.01
    assert np.abs(shifts.mean(axis=0) - velocity).max() <= bound, shifts


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("speed", [0.4, 1.0, 3.0])
def test_cloud_clips_drift_at_their_speed_in_their_direction(direction, speed):
    video = captioned_cloud_frames(direction, "orange", num_frames=8, speed=speed, seed=5)
    velocity = drift_velocity(video[None])[0]
    # Measured up to 6.4 % slow: the still sky gradient behind the clouds pulls towards 0, and each
    # fractional shift is a blend of two whole ones; 10 % still fails a 0.4 clip read as still.
    assert np.abs(velocity - np.array(DIRECTIONS[direction]) * speed).max() <= 0.1 * speed, velocity
    assert drift_direction(velocity) == direction


def test_a_still_picture_that_flickers_does_not_drift():
    rng = np.random.default_rng(0)
    still = cloud_frames(1, seed=3)[0].astype(np.float64)
    flicker = np.stack([still * rng.uniform(0.85, 1.15) + rng.normal(0.0, 10.0, still.shape) for _ in range(8)])
    video = np.clip(flicker, 0, 255).astype(np.uint8)
    assert np.abs(np.diff(video.astype(np.float64), axis=0)).mean() > 8  # it changes a lot frame to frame
    # Measured 0.013 px/frame; the slowest training clip drifts 4 (CLOUD_SPEED).
    assert np.hypot(*drift_velocity(video[None])[0]) < 0.05


def test_training_clips_drift_within_the_generators_speed_range():
    """write_cloud_dataset's speed range is what the clips drift at (the shipped model's seed 7)."""
    videos = np.stack([cloud_frames(8, seed=7 * 100003 + i) for i in range(12)])
    speed = np.hypot(*drift_velocity(videos).T)
    low, high = CLOUD_SPEED
    assert speed.min() >= low * 0.9 and speed.max() <= high * 1.1, speed  # the 10 % bound above
    fast = drift_velocity(np.stack([cloud_frames(8, seed=i, speed=(2.0, 4.0), one_way=True) for i in range(6)]))
    assert fast[:, 0].min() >= 2.0 * 0.9 and fast[:, 0].max() <= 4.0 * 1.1, fast  # all to the right


def test_captions_say_the_direction_and_colour_and_reach_the_manifest(tmp_path):
    held_out = ("up", "green")
    combinations = [(d, c) for d in DIRECTIONS for c in SKY_COLOURS if (d, c) != held_out]
    listing = write_captioned_cloud_dataset(tmp_path / "clips", combinations, clips_per_combination=1,
                                            num_frames=8, size=32, speed=2.0, seed=3)
    with open(listing, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(combinations) == 15
    assert rows[0]["caption"] == "clouds drifting left over a blue sky"
    assert "clouds drifting up over a green sky" not in {row["caption"] for row in rows}
    run_ingest([listing], tmp_path / "ingest", num_frames=8, workers=0, progress=False)
    manifest = read_manifest(tmp_path / "ingest")
    assert {(os.path.basename(r["path"]), r["caption"]) for r in manifest} == {(r["video"], r["caption"]) for r in rows}
    # each clip drifts the way its caption says
    for row in manifest[:6]:
        frames = np.stack(read_frames_at(row["path"], row["kind"], range(8)))
        assert drift_direction(drift_velocity(frames[None])[0]) == CAPTION_DIRECTIONS[row["caption"]], row


def _refuse(constant):
    raise ValueError(f"{constant} is not JSON")


@pytest.mark.slow  # one `latte quality` run: the shipped VAE encodes and decodes the real clips
def test_quality_fails_still_flickering_samples_and_keeps_real_ones_in_range(tmp_path):
    """`latte quality` on four GIFs: two are real clips (the first frames of two training videos), two are
    a still frame with flicker. The real ones drift within the real range, the still ones do not, so the
    check fails (exit 1) although the still ones change from frame to frame."""
    write_cloud_dataset(tmp_path / "videos", videos=8, num_frames=16, size=64, seed=99)
    run_ingest([tmp_path / "videos"], tmp_path / "ingest", num_frames=8, workers=0, progress=False)
    rng = np.random.default_rng(1)
    samples = tmp_path / "samples"
    samples.mkdir()
    # videos 3 and 5 (write_cloud_dataset's seeds) drift ~4.95 px/frame, inside the range; the fastest two
    # (5.7) sit at its top edge, where the GIF's palette can tip one over
    for i, video in enumerate((3, 5)):
        clip = cloud_frames(8, seed=99 * 100003 + video)
        write_gif(str(samples / f"sample_{i:03d}.gif"), clip, 8)
        flicker = clip[0].astype(np.float64) * rng.uniform(0.9, 1.1, (8, 1, 1, 1)) + rng.normal(0, 4, clip.shape)
        write_gif(str(samples / f"sample_{i + 2:03d}.gif"), np.clip(flicker, 0, 255).astype(np.uint8), 8)
    run = subprocess.run([os.path.join(BIN, "latte"), "quality", str(samples), "--manifest", str(tmp_path / "ingest"),
                          "--vae", os.path.join(PRETRAINED, "vae-clouds"), "--real-clips", "16"],
                         capture_output=True, text=True, timeout=600)
    figures = json.loads(run.stdout.strip().splitlines()[-1], parse_constant=_refuse)  # strict JSON
    drift = figures["drift"]
    assert run.returncode == 1 and not figures["passed"] and not figures["drift_in_real_range"], drift
    assert all(drift["real_min"] <= speed <= drift["real_max"] for speed in drift["samples"][:2]), drift
    assert drift["in_range"] == 2  # of 4: below DRIFT_ACCURACY (15 of 16)
    assert drift["velocity_matched"] == 2  # the real clips drift like themselves; the still ones like none
    moves = figures["motion"]  # the change range is the real clips' 5th-95th percentile
    assert moves["real_min"] <= moves["real_p5"] < moves["real_p95"] <= moves["real_max"], moves
    assert max(drift["samples"][2:]) < 0.1 < drift["real_min"], drift
    assert drift["real_min"] == min(drift["clips"][0], drift["round_trip"][0]) and len(drift["velocity"]) == 4


@pytest.mark.slow  # two `latte quality` runs: the shipped VAE encodes and decodes the real clips
def test_quality_checks_each_samples_latent_scale_against_the_real_clips(tmp_path):
    """With the sampled latents beside the GIFs (sample_NNN.npy, scaled as `latte sample` saves them), each
    sample's per-channel std must stay within LATENT_STD_RATIO of the real clips' channel std: real clips'
    own latents pass, the same latents scaled 2x (an amplifying sampler) fail, naming the ratio."""
    write_cloud_dataset(tmp_path / "videos", videos=6, num_frames=8, size=64, seed=5)
    run_ingest([tmp_path / "videos"], tmp_path / "ingest", num_frames=8, workers=0, progress=False)
    vae_dir = os.path.join(PRETRAINED, "vae-clouds")
    vae = load_vae(vae_dir)
    clips = np.stack([cloud_frames(8, seed=5 * 100003 + i) for i in range(4)])  # write_cloud_dataset's seeds
    encoded = encode_frames(vae, clips)  # (4·8, C, h, w)
    latents = encoded.reshape((4, 8) + encoded.shape[1:]) * vae.scaling_factor
    results = {}
    for name, gain in (("real", 1.0), ("amplified", 2.0)):
        samples = tmp_path / name
        samples.mkdir()
        for i, clip in enumerate(clips):
            write_gif(str(samples / f"sample_{i:03d}.gif"), clip, 8)
            np.save(samples / f"sample_{i:03d}.npy", (latents[i] * gain).astype(np.float32))
        run = subprocess.run([os.path.join(BIN, "latte"), "quality", str(samples), "--manifest", str(tmp_path / "ingest"),
                              "--vae", vae_dir, "--real-clips", "6"], capture_output=True, text=True, timeout=600)
        results[name] = json.loads(run.stdout.strip().splitlines()[-1], parse_constant=_refuse)["latent_std"]
    real, amplified = results["real"], results["amplified"]
    assert real["within"] and real["max_ratio"] <= LATENT_STD_RATIO, real
    # the ratio is linear in the gain: 2x the real clips' own ratio (float32 rounding only, 1e-3 relative)
    assert not amplified["within"] and abs(amplified["max_ratio"] - 2 * real["max_ratio"]) < 1e-3 * amplified["max_ratio"]
    assert len(amplified["samples"]) == 4 and len(amplified["real"]) == vae.latent_channels


def test_velocity_matches_counts_direction_as_well_as_speed():
    """Real clips drifting sideways at 4-6 px/frame: a sample drifting up at 5 px/frame has their speed
    but no real clip's velocity; one at 25 % off a clip's velocity still matches, at 30 % it does not."""
    real = np.array([[4.0, 0.0], [-5.0, 0.0], [6.0, 0.0]])
    assert velocity_matches(np.array([[0.0, 5.0]]), real) == 0
    assert velocity_matches(np.array([[-5.0, 0.0], [4.0, 1.0], [5.0, 0.0]]), real) == 3  # gaps 0, 1 (24 %), 1
    assert velocity_matches(np.array([[4.0, 1.25]]), real) == 0  # gap 1.25, 30 % of its speed 4.19


@pytest.mark.slow  # the shipped VAE encodes and decodes the real clips, twice
def test_shuffled_frames_of_fast_clips_are_told_apart_by_their_drift(tmp_path):
    """The demo's clips (one way, 4-6 px/frame) drift further per frame than their clouds are wide, so
    their shuffled frames change about as much as consecutive ones and the frame-change control cannot
    reject them; the drift does. Real clips given as samples pass the whole check; the same clips with
    their frames shuffled fail it on drift, while the shuffled baseline is still counted as rejected."""
    from latte_toolkit.inference.quality import check_samples, real_clips
    write_cloud_dataset(tmp_path / "videos", videos=16, num_frames=16, size=64, seed=5, one_way=True)
    run_ingest([tmp_path / "videos"], tmp_path / "ingest", num_frames=8, workers=0, progress=False)
    vae = load_vae(os.path.join(PRETRAINED, "vae-clouds"))
    real = real_clips(tmp_path / "ingest", 8, 64, 16, seed=3)  # other windows than the check's own (seed 0)
    passed = check_samples(real, tmp_path / "ingest", vae, real_count=32)
    assert passed["passed"] and passed["shuffled_rejected"] and passed["drift_in_real_range"], passed["drift"]
    assert passed["drift"]["shuffled_in_range"] < 15 / 16 * 32, passed["drift"]
    rng = np.random.default_rng(4)
    shuffled = np.stack([clip[rng.permutation(8)] for clip in real])
    failed = check_samples(shuffled, tmp_path / "ingest", vae, real_count=32)
    assert not failed["passed"] and not failed["drift_in_real_range"], failed["drift"]
    assert failed["shuffled_rejected"], failed  # the baseline does not depend on the samples
