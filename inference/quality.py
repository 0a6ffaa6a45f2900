"""`latte quality`: are sampled videos closer to the training videos than baselines are?

Three measures, the first two compared with baselines that a broken model would resemble:
- appearance: the Fréchet distance between Gaussian fits of per-frame features of the samples and
  of real clips. Features: the VAE encoder's posterior mean per frame, pooled to each latent
  channel's mean and standard deviation and a 2x2 grid of channel means. Baseline: decoded pure
  noise (what an untrained model gives).
- motion: the mean absolute change between consecutive frames (pixels in [0, 1]). Baseline: the real
  clips with their frames shuffled in time (right frames, wrong order; their appearance distance is
  the real clips' own).
- drift: the coherent motion of each video in px/frame, the mean over consecutive frames of their shift
  measured by phase correlation (drift_velocity). Frame change alone passes still pictures that
  flicker; their drift is ~0. The reference range spans the real clips' speeds read both as they
  are and after a VAE round trip (encode, decode the posterior mean: what a perfect model of the
  latents would give; the shipped VAE slows a clip's measured drift by ~10 %).
The check passes when the samples' distance is below the noise baseline's, their motion lies within
the real clips' CHANGE_PERCENTILES range, the shuffled clips are told from real ones by a motion measure
(shuffled_rejected: their frame change outside that range, or fewer than DRIFT_ACCURACY of them drifting
within the real range; for clips that drift further per frame than their clouds are wide, consecutive
frames already differ about as much as shuffled ones do, and only the drift tells them apart), and at least
DRIFT_ACCURACY of the samples drift at a speed within the real clips' drift range (JSON:
drift.real_min..real_max, drift.in_range; drift_in_real_range), and, where `latte sample` left the
sampled latents beside the GIFs (sample_NNN.npy), each sample's per-channel latent std is at most
LATENT_STD_RATIO times that channel's std over the real clips' latents (a sampler that amplifies a model's
high-noise errors leaves latents several times the data's scale, which the decoder clips into blotches).

Prompts (a text model's samples, whose summary.json names each one's prompt): check_samples takes the
prompt check as a function (`prompt_check(samples, prompts, manifest)` -> a result with "passed");
the cloud demo's, which reads each sample's drift direction and sky colour against the ones its caption
names, is tools/prompt_check.check_prompts_against_manifest.
"""
import glob
import json
import os

import numpy as np
from PIL import Image, ImageSequence

from latte_core.vae import load_vae
from latte_toolkit.datasets.video import center_crop_resize, read_frames_at, read_manifest, to_frames, to_pixels

# Phase correlation is weighted by a Gaussian low-pass of this width (cycles per pixel): structures of
# ~8 px and more count, while the fixed pattern a VAE decoder leaves at its latent grid (1/4 cycle per
# pixel for a 4x VAE) does not; unweighted, that still pattern pulls every decoded shift towards 0
# (the shipped VAE's round trip of clips drifting 0.7 px/frame: 0.03 unweighted, 0.66 weighted).
DRIFT_BANDWIDTH = 1 / 16

# The frame-change range: the real clips' 5th to 95th percentile, not their extremes. A model's mean change
# lies well inside it, while the few densest fast clips no longer stretch it to the shuffled clips' mean
# (clips at 2-3.5 px/frame: shuffled 0.0596 against a real maximum of 0.0608, but 1.14-1.24x the real p95).
CHANGE_PERCENTILES = (5, 95)
# Of the samples, the share whose drift speed must lie within the real clips' range. Not all: a sample of
# the real clips' own distribution falls outside the extremes of 2 x 64 real clips with odds 2/129, so all
# 16 of 16 would fail a perfect model one time in five (0.78 pass), at most one outside 3 in 100 (0.97).
DRIFT_ACCURACY = 15 / 16
# velocity_matches: a sample's velocity may differ from a real clip's by this share of its speed (the
# memorise rung's 25 % bound on direction and speed).
VELOCITY_TOLERANCE = 0.25
# A sample's latent std per channel (over its frames and pixels) against the same channel's std over all
# real clips: one clip's std is below the population's (it lacks the spread between clips), so 1.5x is
# loose for samples of the data's distribution and catches the 4-7x blow-up of epsilon models at high noise.
LATENT_STD_RATIO = 1.5


def _peak_offset(left, centre, right):
    """Sub-pixel offset of a peak from three samples around it: the vertex of a parabola through their
    logarithms (exact for the Gaussian peak the low-pass gives), through the values if one is <= 0."""
    if min(left, centre, right) > 0:
        left, centre, right = np.log(left), np.log(centre), np.log(right)
    curvature = left - 2 * centre + right
    return 0.5 * (left - right) / curvature if curvature < 0 else 0.0


def frame_shifts(planes, bandwidth=DRIFT_BANDWIDTH):
    """(F, C, H, W) float planes -> (F - 1, 2) shifts (dx, dy) in pixels of each frame from the one
    before (+x right, +y down), by phase correlation summed over the C planes, Hann-windowed."""
    planes = np.asarray(planes, dtype=np.float64)
    _, _, height, width = planes.shape
    window = np.outer(np.hanning(height), np.hanning(width))
    spectra = np.fft.fft2((planes - planes.mean(axis=(2, 3), keepdims=True)) * window)
    cross = (spectra[1:] * np.conj(spectra[:-1])).sum(axis=1)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    lowpass = np.exp(-(fx ** 2 + fy ** 2) / (2 * bandwidth ** 2))
    surfaces = np.fft.ifft2(lowpass * cross / (np.abs(cross) + 1e-12)).real
    shifts = np.empty((len(surfaces), 2))
    for i, surface in enumerate(surfaces):
        py, px = np.unravel_index(np.argmax(surface), surface.shape)
        dx = _peak_offset(surface[py, (px - 1) % width], surface[py, px], surface[py, (px + 1) % width])
        dy = _peak_offset(surface[(py - 1) % height, px], surface[py, px], surface[(py + 1) % height, px])
        shifts[i] = ((px + width // 2) % width - width // 2 + dx, (py + height // 2) % height - height // 2 + dy)
    return shifts


def drift_velocity(videos, bandwidth=DRIFT_BANDWIDTH):
    """uint8 videos (N, F, H, W, 3) -> (N, 2) mean shift (dx, dy) in px/frame of their luminance."""
    luminance = np.asarray(videos, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.stack([frame_shifts(video[:, None], bandwidth).mean(axis=0) for video in luminance])


def drift_direction(velocity):
    """"left", "right", "up" or "down": the axis and sign of a (dx, dy) drift's larger component."""
    dx, dy = velocity
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def encode_frames(vae, videos, micro_batch=16):
    """videos uint8 (N, F, H, W, 3) -> the VAE's posterior means (N·F, C, h, w)."""
    pixels = to_pixels(list(videos.reshape((-1,) + videos.shape[2:])))
    mean, _ = vae.encode_video(pixels[None], micro_batch=micro_batch)
    return mean[0]


def latent_features(z):
    """Posterior means (N·F, C, h, w) -> per-frame features (N·F, 6·C)."""
    n, c, h, w = z.shape
    grid = z[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, 2, h // 2, 2, w // 2).mean(axis=(3, 5))
    return np.concatenate([z.mean(axis=(2, 3)), z.std(axis=(2, 3)), grid.reshape(n, c * 4)], axis=1)


def frechet_distance(a, b):
    """Fréchet distance between Gaussian fits of two feature sets (rows are samples)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sum(np.sqrt(np.clip(cross, 0, None))))


# The share of each half-frame's pixels, the darkest, whose mean colour is its sky colour: clouds are
# brighter than the sky behind them. Measured on 480 captioned clips (8 frames, 4 sky colours) against
# centroids of 64 others (all at 5 px/frame): 0 misread; the median colour misread 63 (clouds covering
# half a frame read grey).
SKY_PIXEL_SHARE = 0.1


def colour_features(videos):
    """Per video (uint8 (N, F, H, W, 3)): the sky colour of its top and of its bottom half over all its
    frames, in [0, 1], (N, 6): a sky gradient's two ends, each the mean colour of the darkest
    SKY_PIXEL_SHARE of the half's pixels (the sky between the clouds). Samples are told apart by the
    nearest of the real clips' per-class means (colour centroids) of these."""
    frames = videos.astype(np.float32) / 255.0
    n, _, height = frames.shape[:3]
    features = []
    for half in (frames[:, :, :height // 2], frames[:, :, height // 2:]):
        pixels = half.reshape(n, -1, 3)
        darkest = np.argsort(pixels.sum(axis=2), axis=1, kind="stable")[:, :max(1, int(SKY_PIXEL_SHARE * pixels.shape[1]))]
        features.append(np.take_along_axis(pixels, darkest[..., None], axis=1).mean(axis=1))
    return np.concatenate(features, axis=1)


def motion(videos):
    """Mean absolute change between consecutive frames, per video (pixels scaled to [0, 1])."""
    frames = videos.astype(np.float32) / 255.0
    return np.abs(np.diff(frames, axis=1)).mean(axis=(1, 2, 3, 4))


def real_clips(manifest, num_frames, image_size, count, seed=0):
    """`count` clips of `num_frames` consecutive frames from the manifest's videos (crop rule applied)."""
    rows = [r for r in read_manifest(manifest) if r["num_frames"] >= num_frames]
    if not rows:
        raise ValueError(f"{manifest}: no video of {num_frames} frames or more")
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        row = rows[i % len(rows)]
        start = int(rng.integers(0, row["num_frames"] - num_frames + 1))
        frames = read_frames_at(row["path"], row["kind"], range(start, start + num_frames))
        clips.append(np.stack([center_crop_resize(f, image_size) for f in frames]))
    return np.stack(clips)


def _sample_gif_paths(folder):
    return sorted(glob.glob(os.path.join(folder, "sample_*.gif")))


def sample_prompts(folder):
    """The prompt of each sample_*.gif (in read_sample_gifs' order) from the folder's summary.json, as
    `latte sample` of a text model writes it; None for samples of other models."""
    path = os.path.join(folder, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            listed = json.load(handle).get("prompts")
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
    if not listed:
        return None
    by_name = {os.path.basename(entry["file"]): entry["prompt"] for entry in listed}
    names = [os.path.basename(p) for p in _sample_gif_paths(folder)]
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"{path}: no prompt for {', '.join(missing[:4])}")
    return [by_name[name] for name in names]


def read_sample_latents(folder):
    """The sampled latents (N, F, C, h, w, scaled by the VAE's scaling factor) `latte sample` saved beside
    the GIFs as sample_NNN.npy, in read_sample_gifs' order; None unless every GIF has its .npy."""
    paths = [path[: -len(".gif")] + ".npy" for path in _sample_gif_paths(folder)]
    if not paths or not all(os.path.exists(path) for path in paths):
        return None
    return np.stack([np.load(path, allow_pickle=False) for path in paths])


def read_sample_gifs(folder):
    """The sample_*.gif files `latte sample` wrote, as uint8 (N, F, H, W, 3)."""
    paths = _sample_gif_paths(folder)
    if not paths:
        raise FileNotFoundError(f"{folder}: no sample_*.gif")
    videos = []
    for path in paths:
        with Image.open(path) as image:
            videos.append(np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]))
    return np.stack(videos)


def check_samples(samples, manifest, vae, real_count=64, seed=0, prompts=None, prompt_check=None, latents=None):
    """The measures for `samples` (uint8 (N, F, H, W, 3)) against real clips and the baselines, with
    `latents` (their sampled latents, read_sample_latents) the latent-scale check, and with `prompts` (one
    per sample) and a `prompt_check` the prompt check against the manifest's captioned clips."""
    _, num_frames, height = samples.shape[:3]
    real = real_clips(manifest, num_frames, height, real_count, seed)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([clip[rng.permutation(num_frames)] for clip in real])
    latent = height // vae.downsample_factor
    noise_latents = rng.standard_normal((len(samples), num_frames, vae.latent_channels, latent, latent))
    decoded = vae.decode_video((noise_latents / vae.scaling_factor).astype(np.float32))
    noise_videos = to_frames(decoded)
    real_latents = encode_frames(vae, real)
    real_features = latent_features(real_latents)
    distance = {name: round(frechet_distance(latent_features(encode_frames(vae, videos)), real_features), 4)
                for name, videos in (("samples", samples), ("noise_decoded", noise_videos))}
    real_motion = motion(real)
    low, high = (float(p) for p in np.percentile(real_motion, CHANGE_PERCENTILES))
    moves = {"real_min": float(real_motion.min()), "real_max": float(real_motion.max()),
             f"real_p{CHANGE_PERCENTILES[0]}": low, f"real_p{CHANGE_PERCENTILES[1]}": high,
             "samples": float(motion(samples).mean()), "shuffled": float(motion(shuffled).mean())}
    result = {"samples": len(samples), "real_clips": len(real), "frechet_distance": distance,
              "motion": {k: round(v, 5) for k, v in moves.items()},
              "closer_than_noise": distance["samples"] < distance["noise_decoded"],
              "motion_in_real_range": low <= moves["samples"] <= high,
              "shuffled_outside_range": not low <= moves["shuffled"] <= high}
    round_trip = to_frames(vae.decode_video(real_latents.reshape(real.shape[:2] + real_latents.shape[1:])))
    velocity, round_trip_velocity, clip_velocity, shuffled_velocity = (
        drift_velocity(v) for v in (samples, round_trip, real, shuffled))
    speed, round_trip_speed, clip_speed, shuffled_speed = (
        np.hypot(*v.T) for v in (velocity, round_trip_velocity, clip_velocity, shuffled_velocity))
    low, high = min(round_trip_speed.min(), clip_speed.min()), max(round_trip_speed.max(), clip_speed.max())
    result["drift"] = {"real_min": round(float(low), 4), "real_max": round(float(high), 4),
                       "clips": np.round([clip_speed.min(), clip_speed.max()], 4).tolist(),
                       "round_trip": np.round([round_trip_speed.min(), round_trip_speed.max()], 4).tolist(),
                       "samples": np.round(speed, 4).tolist(), "velocity": np.round(velocity, 4).tolist()}

    def in_range(speeds):  # how many lie in the real range, and whether that is DRIFT_ACCURACY of them
        count = int(np.sum((low <= speeds) & (speeds <= high)))
        return count, count >= DRIFT_ACCURACY * len(speeds)

    result["drift"]["in_range"], result["drift_in_real_range"] = in_range(speed)
    result["drift"]["velocity_matched"] = velocity_matches(velocity, np.concatenate([clip_velocity, round_trip_velocity]))
    result["drift"]["shuffled_in_range"], shuffled_drift_real = in_range(shuffled_speed)
    result["shuffled_rejected"] = result["shuffled_outside_range"] or not shuffled_drift_real
    result["passed"] = (result["closer_than_noise"] and result["motion_in_real_range"] and result["shuffled_rejected"]
                        and result["drift_in_real_range"])
    if latents is not None:
        result["latent_std"] = latent_scale(latents / vae.scaling_factor, real_latents)
        result["passed"] = result["passed"] and result["latent_std"]["within"]
    if prompts is not None and prompt_check is not None:
        result["prompts"] = prompt_check(samples, prompts, manifest)
        result["passed"] = result["passed"] and result["prompts"]["passed"]
    return result


def velocity_matches(velocity, real_velocity):
    """How many samples drift like some real clip, direction included: their velocity (dx, dy) within
    VELOCITY_TOLERANCE of their speed from a real clip's. Reported, not part of the check: the speed range
    alone passes samples that drift up or down when every clip drifts sideways."""
    gaps = np.linalg.norm(velocity[:, None, :] - real_velocity[None, :, :], axis=2).min(axis=1)
    return int(np.sum(gaps <= VELOCITY_TOLERANCE * np.hypot(*velocity.T)))


def latent_scale(sampled, real_latents):
    """Each sample's per-channel std (sampled: unscaled latents (N, F, C, h, w)) against the channel's std
    over the real clips' latents (N·F, C, h, w), and whether every one is within LATENT_STD_RATIO of it."""
    if sampled.ndim != 5 or sampled.shape[2] != real_latents.shape[1]:
        raise ValueError(f"sampled latents of shape {sampled.shape}: expected (videos, frames, "
                         f"{real_latents.shape[1]} channels, h, w)")
    real = real_latents.std(axis=(0, 2, 3))
    per_sample = sampled.std(axis=(1, 3, 4))
    ratio = per_sample / real
    return {"real": np.round(real, 4).tolist(), "samples": np.round(per_sample, 4).tolist(),
            "max_ratio": round(float(ratio.max()), 4), "bound": LATENT_STD_RATIO,
            "within": bool(np.all(ratio <= LATENT_STD_RATIO))}


def run_quality(samples_dir, manifest, vae_checkpoint, real_clips=64, prompt_check=None):
    """`latte quality`: the check of SAMPLES_DIR's sample_*.gif against the manifest's videos (and, for a
    text model's samples, `prompt_check`'s of their prompts)."""
    return check_samples(read_sample_gifs(samples_dir), manifest, load_vae(vae_checkpoint), real_clips,
                         prompts=sample_prompts(samples_dir), prompt_check=prompt_check,
                         latents=read_sample_latents(samples_dir))
