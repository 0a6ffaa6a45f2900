"""`latte quality`: are sampled videos closer to the training videos than baselines are?

Two measures, each compared with baselines that a broken model would resemble:
- appearance: the Fréchet distance between Gaussian fits of per-frame features of the samples and
  of real clips. Features: the VAE encoder's posterior mean per frame, pooled to each latent
  channel's mean and standard deviation and a 2x2 grid of channel means. Baseline: decoded pure
  noise (what an untrained model gives).
- motion: the mean absolute change between consecutive frames (pixels in [0, 1]). Baseline: the real
  clips with their frames shuffled in time (right frames, wrong order; their appearance distance is
  the real clips' own).
The check passes when the samples' distance is below the noise baseline's and their motion lies within
the range of the real clips' while the shuffled clips' does not.
"""
import glob
import json
import os

import numpy as np


def frame_features(vae, videos, micro_batch=16):
    """videos uint8 (N, F, H, W, 3) -> per-frame features (N·F, 6·C)."""
    from latte_toolkit.datasets.video import to_pixels
    frames = videos.reshape((-1,) + videos.shape[2:])
    pixels = to_pixels(list(frames))
    mean, _ = vae.encode_video(pixels[None], micro_batch=micro_batch)
    z = mean[0]  # (N·F, C, h, w)
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


def motion(videos):
    """Mean absolute change between consecutive frames, per video (pixels scaled to [0, 1])."""
    frames = videos.astype(np.float32) / 255.0
    return np.abs(np.diff(frames, axis=1)).mean(axis=(1, 2, 3, 4))


def real_clips(manifest, num_frames, image_size, count, seed=0):
    """`count` clips of `num_frames` consecutive frames from the manifest's videos (crop rule applied)."""
    from latte_toolkit.datasets.video import center_crop_resize, read_frames_at, read_manifest
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


def read_sample_gifs(folder):
    """The sample_*.gif files `latte sample` wrote, as uint8 (N, F, H, W, 3)."""
    from PIL import Image, ImageSequence
    paths = sorted(glob.glob(os.path.join(folder, "sample_*.gif")))
    if not paths:
        raise FileNotFoundError(f"{folder}: no sample_*.gif")
    videos = []
    for path in paths:
        with Image.open(path) as image:
            videos.append(np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]))
    return np.stack(videos)


def check_samples(samples, manifest, vae, real_count=64, seed=0):
    """The two measures for `samples` (uint8 (N, F, H, W, 3)) against real clips and the baselines."""
    from latte_toolkit.datasets.video import to_frames
    _, num_frames, height = samples.shape[:3]
    real = real_clips(manifest, num_frames, height, real_count, seed)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([clip[rng.permutation(num_frames)] for clip in real])
    latent = height // vae.downsample_factor
    noise_latents = rng.standard_normal((len(samples), num_frames, vae.latent_channels, latent, latent))
    decoded = vae.decode_video((noise_latents / vae.scaling_factor).astype(np.float32))
    noise_videos = to_frames(decoded)
    real_features = frame_features(vae, real)
    distance = {name: round(frechet_distance(frame_features(vae, videos), real_features), 4)
                for name, videos in (("samples", samples), ("noise_decoded", noise_videos))}
    real_motion = motion(real)
    moves = {"real_min": float(real_motion.min()), "real_max": float(real_motion.max()),
             "samples": float(motion(samples).mean()), "shuffled": float(motion(shuffled).mean())}
    low, high = moves["real_min"], moves["real_max"]
    result = {"samples": len(samples), "real_clips": len(real), "frechet_distance": distance,
              "motion": {k: round(v, 5) for k, v in moves.items()},
              "closer_than_noise": distance["samples"] < distance["noise_decoded"],
              "motion_in_real_range": low <= moves["samples"] <= high,
              "shuffled_outside_range": not low <= moves["shuffled"] <= high}
    result["passed"] = result["closer_than_noise"] and result["motion_in_real_range"] and result["shuffled_outside_range"]
    return result


def write_report(result, path):
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    return path


def run_quality(samples_dir, manifest, vae_checkpoint, real_clips=64):
    """`latte quality`: the check of SAMPLES_DIR's sample_*.gif against the manifest's videos."""
    from latte_core.vae import load_vae
    return check_samples(read_sample_gifs(samples_dir), manifest, load_vae(vae_checkpoint), real_clips)
