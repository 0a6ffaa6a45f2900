"""Procedural videos for demos, benchmarks and tests: real H.264 files made with the ffmpeg binary
that the imageio-ffmpeg wheel ships, and folders of JPEG/PNG frames."""
import os

import numpy as np


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


def write_mp4(path, frames, fps=8, faststart=False):
    """H.264 mp4 (yuv420p); with faststart the index (moov) precedes the data."""
    import imageio_ffmpeg
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 in yuv420p needs even sizes, got {width}x{height}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    params = ["-loglevel", "error"] + (["-movflags", "+faststart"] if faststart else [])
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, output_params=params)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()
    return path


def write_frame_folder(folder, frames, ext="jpg", names=None):
    """One image per frame, named f_0.jpg, f_1.jpg, ... unless `names` are given."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    names = names or [f"f_{i}.{ext}" for i in range(len(frames))]
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(os.path.join(folder, name))
    return folder
