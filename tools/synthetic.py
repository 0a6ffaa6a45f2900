"""Procedural videos for demos, benchmarks and tests: the frames; datasets.video writes them as real
H.264 files (through the ffmpeg binary that the imageio-ffmpeg wheel ships) or frame folders."""
import csv
import os

import cv2
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


def texture_drift_frames(num_frames, speed, height=128, width=128, seed=0, angle=0.4):
    """Blurred noise (every pixel textured, so the whole picture moves) drifting `speed` px/frame in
    direction `angle` (radians; bicubic resampling): (F, H, W, 3) uint8, a motion of known truth."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((3 * height, 3 * width, 3)).astype(np.float32), (0, 0), 3)
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * 255
    frames = []
    for i in range(num_frames):
        dx, dy = speed * i * np.cos(angle) + width, speed * i * np.sin(angle) + height
        frames.append(cv2.warpAffine(texture, np.float32([[1, 0, -dx], [0, 1, -dy]]), (width, height),
                                     flags=cv2.INTER_CUBIC))
    return np.clip(np.stack(frames), 0, 255).round().astype(np.uint8)


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


def _cloud_layer(rng, size):
    """A cloud layer on a canvas twice as wide as `size`, periodic along x: (alpha, shade), each
    (size, 2·size). Cover, softness and opacity are drawn from rng."""
    canvas_width = 2 * size
    density = 0.6 * _smooth_noise(rng, size, canvas_width, size // 4) + 0.4 * _smooth_noise(rng, size, canvas_width, size // 8)
    cover = rng.uniform(0.45, 0.65)
    softness = rng.uniform(0.06, 0.12)
    alpha = np.clip((density - cover) / softness, 0.0, 1.0) * rng.uniform(0.7, 0.95)
    shade = 1.0 - 0.25 * np.clip((density - cover) / 0.3, 0.0, 1.0)  # thicker cloud, greyer
    return alpha, shade


def _drift_frames(sky, alpha, shade, cloud_colour, velocity, num_frames, size):
    """The layer shifted by `velocity` (dx, dy) px per frame over the sky, seen through a size x size
    window: a fractional shift blends the two nearest whole ones, so motion is smooth and never jumps.
    A vertical drift uses the layer transposed (periodic along y)."""
    dx, dy = velocity
    axis, speed = (1, dx) if dy == 0 else (0, dy)
    if axis == 0:
        alpha, shade = alpha.T, shade.T
    frames = []
    for i in range(num_frames):
        shift = speed * i
        whole, part = int(np.floor(shift)), shift - np.floor(shift)
        layer_alpha = (1 - part) * np.roll(alpha, whole, axis=axis) + part * np.roll(alpha, whole + 1, axis=axis)
        layer_shade = (1 - part) * np.roll(shade, whole, axis=axis) + part * np.roll(shade, whole + 1, axis=axis)
        a = layer_alpha[:size, :size, None]
        frame = sky * (1 - a) + cloud_colour * layer_shade[:size, :size, None] * a
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _sky(top, horizon, size):
    rows = np.linspace(0.0, 1.0, size)[:, None, None]
    return np.asarray(top) * (1 - rows) + np.asarray(horizon) * rows  # (size, 1, 3)


# Drift speed (px/frame, drawn uniformly per clip) of the cloud clips (the data of the shipped Latte and
# of `latte demo`) and of the captioned clips (of the shipped text Latte and `latte demo --text`): 1-1.5
# latent pixels per frame (the shipped VAE downsamples 4x). At the 0.1-0.3 latent px of the first clips
# (0.4-1.2 px/frame) no fine-tune of up to 1000 steps made samples move, at 1-1.5 the first ones did after
# ~600 steps (pretrained/EXPERIMENTS.md #3, #6, #9). The demo's clips drift one way (one_way: right): from
# left and right clips half the samples drifted too slowly (#20-#24); a caption naming the direction breaks
# that symmetry as well (#26).
CLOUD_SPEED = (4.0, 6.0)


def cloud_frames(num_frames, size=64, seed=0, speed=CLOUD_SPEED, one_way=False):
    """Clouds drifting over a sky gradient, like a time-lapse: (F, size, size, 3) uint8.

    Per video (from the seed): the sky's colours (day blue to a warm dusk), cloud cover, softness and
    the drift: left or right (only right with one_way) at a speed drawn uniformly from the `speed`
    range (px/frame)."""
    rng = np.random.default_rng(seed)
    dusk = rng.random() < 0.3
    top = np.array([20, 60, 150]) + rng.integers(-15, 16, 3)
    horizon = (np.array([240, 170, 110]) if dusk else np.array([170, 205, 240])) + rng.integers(-15, 16, 3)
    alpha, shade = _cloud_layer(rng, size)
    cloud_colour = np.array([255, 235, 225]) if dusk else np.array([250, 250, 252])
    dx = rng.uniform(*speed) * (1 if one_way else rng.choice([-1, 1]))
    return _drift_frames(_sky(top, horizon, size), alpha, shade, cloud_colour, (dx, 0.0), num_frames, size)


def write_cloud_dataset(folder, videos=48, num_frames=32, size=64, fps=8, seed=0, speed=CLOUD_SPEED, one_way=False):
    """`videos` H.264 clips of drifting clouds (cloud_frames) in folder/clouds_NNN.mp4; returns the folder."""
    for i in range(videos):
        write_mp4(os.path.join(folder, f"clouds_{i:03d}.mp4"),
                  cloud_frames(num_frames, size, seed=seed * 100003 + i, speed=speed, one_way=one_way), fps=fps)
    return folder


# ------------------------------------------------------------------------- captioned clips (text-to-video)
# Unit drift per direction in image coordinates (+x right, +y down), as quality.drift_direction reads it.
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# Sky colours: (top, horizon) RGB of the gradient.
SKY_COLOURS = {"blue": ((20, 60, 150), (170, 205, 240)), "orange": ((70, 50, 120), (245, 160, 80)),
               "grey": ((85, 90, 100), (180, 185, 190)), "green": ((20, 90, 70), (150, 215, 170))}


def cloud_caption(direction, colour):
    """The caption of a clip: "clouds drifting left over a blue sky"."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"clouds drifting {direction} over {article} {colour} sky"


# Every caption the captioned generator writes, with the direction its clips drift in.
CAPTION_DIRECTIONS = {cloud_caption(d, c): d for d in DIRECTIONS for c in SKY_COLOURS}


def captioned_cloud_frames(direction, colour, num_frames, size=64, speed=1.0, seed=0):
    """Clouds drifting in `direction` (a DIRECTIONS key) at `speed` px/frame over a `colour` sky (a
    SKY_COLOURS key), the layer and small colour variations from the seed: (F, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    top, horizon = (np.array(c) + rng.integers(-10, 11, 3) for c in SKY_COLOURS[colour])
    alpha, shade = _cloud_layer(rng, size)
    velocity = tuple(speed * unit for unit in DIRECTIONS[direction])
    return _drift_frames(_sky(top, horizon, size), alpha, shade, np.array([250, 250, 252]), velocity, num_frames, size)


def write_captioned_cloud_dataset(folder, combinations=None, clips_per_combination=4, num_frames=32, size=64,
                                  speed=CLOUD_SPEED, fps=8, seed=0):
    """H.264 clips of captioned clouds in folder/<direction>_<colour>_NNN.mp4 and folder/captions.csv
    (columns video, caption: the list `latte ingest --source folder/captions.csv` reads, which carries
    each caption into the manifest). `combinations`: (direction, colour) pairs, all by default (leave
    some out to hold them out of training). speed: px/frame, or a (low, high) range drawn from per clip.
    Returns the CSV's path."""
    combinations = combinations or [(d, c) for d in DIRECTIONS for c in SKY_COLOURS]
    os.makedirs(folder, exist_ok=True)
    rows = []
    for index, (direction, colour) in enumerate(combinations):
        for i in range(clips_per_combination):
            name = f"{direction}_{colour}_{i:03d}.mp4"
            clip_seed = seed * 100003 + index * 1009 + i
            clip_speed = speed if np.isscalar(speed) else np.random.default_rng([clip_seed, 1]).uniform(*speed)
            frames = captioned_cloud_frames(direction, colour, num_frames, size, clip_speed, seed=clip_seed)
            write_mp4(os.path.join(folder, name), frames, fps=fps)
            rows.append({"video": name, "caption": cloud_caption(direction, colour)})
    path = os.path.join(folder, "captions.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


# The text demo holds these pairings out of training: one colour per direction and each colour once, so
# every word of their captions is trained, only the pairing is new.
HELD_OUT_COMBINATIONS = (("left", "green"), ("right", "grey"), ("up", "orange"), ("down", "blue"))


def trained_pairings():
    """The (direction, colour) pairings the text demo trains on: all but HELD_OUT_COMBINATIONS, in
    DIRECTIONS x SKY_COLOURS order."""
    return [(d, c) for d in DIRECTIONS for c in SKY_COLOURS if (d, c) not in HELD_OUT_COMBINATIONS]
