"""Procedural videos for demos, benchmarks and tests: the frames; datasets.video writes them as real
H.264 files (through the ffmpeg binary that the imageio-ffmpeg wheel ships) or frame folders."""
import os

import numpy as np

from latte_toolkit.datasets.video import write_mp4


def moving_square_frames(num_frames, height=48, width=64, seed=0):
    """A bright square drifting over a colour gradient: (F, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 96)], axis=-1).astype(np.uint8)
    y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
    frames = []
    for i in range(num_frames):
        frame = base.copy()
        y, x = (y0 + i) % (height - 8), (x0 + 2 * i) % (width - 8)
        frame[y:y + 8, x:x + 8] = 255
        frames.append(frame)
    return np.stack(frames)


def _smooth_noise(rng, height, width, cell):
    """Value noise: a coarse random grid interpolated with smoothstep weights, periodic in x."""
    gh, gw = height // cell + 2, width // cell
    grid = rng.random((gh, gw))
    ys = np.arange(height) / cell
    xs = np.arange(width) / cell
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # no creases at the grid lines
    x1 = (x0 + 1) % gw
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def cloud_frames(num_frames, size=64, seed=0):
    """Clouds drifting over a sky gradient, like a time-lapse: (F, size, size, 3) uint8.

    Per video (from the seed): the sky's colours (day blue to a warm dusk), cloud cover, softness and
    the drift speed and direction. The cloud layer is periodic noise on a canvas twice as wide,
    shifted a fraction of a pixel per frame, so motion is smooth and never jumps."""
    rng = np.random.default_rng(seed)
    dusk = rng.random() < 0.3
    top = np.array([20, 60, 150]) + rng.integers(-15, 16, 3)
    horizon = (np.array([240, 170, 110]) if dusk else np.array([170, 205, 240])) + rng.integers(-15, 16, 3)
    rows = np.linspace(0.0, 1.0, size)[:, None, None]
    sky = top * (1 - rows) + horizon * rows  # (size, 1, 3)
    canvas_width = 2 * size
    density = 0.6 * _smooth_noise(rng, size, canvas_width, size // 4) + 0.4 * _smooth_noise(rng, size, canvas_width, size // 8)
    cover = rng.uniform(0.45, 0.65)
    softness = rng.uniform(0.06, 0.12)
    alpha = np.clip((density - cover) / softness, 0.0, 1.0) * rng.uniform(0.7, 0.95)
    shade = 1.0 - 0.25 * np.clip((density - cover) / 0.3, 0.0, 1.0)  # thicker cloud, greyer
    cloud_colour = np.array([255, 235, 225]) if dusk else np.array([250, 250, 252])
    speed = rng.uniform(0.4, 1.2) * rng.choice([-1, 1])
    frames = []
    for i in range(num_frames):
        shift = speed * i
        whole, part = int(np.floor(shift)), shift - np.floor(shift)
        layer_alpha = (1 - part) * np.roll(alpha, whole, axis=1) + part * np.roll(alpha, whole + 1, axis=1)
        layer_shade = (1 - part) * np.roll(shade, whole, axis=1) + part * np.roll(shade, whole + 1, axis=1)
        a = layer_alpha[:, :size, None]
        frame = sky * (1 - a) + cloud_colour * layer_shade[:, :size, None] * a
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_cloud_dataset(folder, videos=48, num_frames=32, size=64, fps=8, seed=0):
    """`videos` H.264 clips of drifting clouds in folder/clouds_NNN.mp4; returns the folder."""
    for i in range(videos):
        write_mp4(os.path.join(folder, f"clouds_{i:03d}.mp4"), cloud_frames(num_frames, size, seed=seed * 100003 + i),
                  fps=fps)
    return folder
