"""Real media for tests: H.264 clips from imageio-ffmpeg's bundled ffmpeg, JPEG/PNG frame folders,
and the broken inputs real datasets contain."""
import os

import numpy as np
from PIL import Image


def moving_square_frames(num_frames, height=48, width=64, seed=0):
    """A bright square drifting over a gradient: (F, H, W, 3) uint8."""
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
    """H.264 mp4; with faststart the index (moov) precedes the data, so a truncated file still opens."""
    import imageio_ffmpeg
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    height, width = frames.shape[1:3]
    params = ["-loglevel", "error"] + (["-movflags", "+faststart"] if faststart else [])
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, output_params=params)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()
    return path


def write_frame_folder(folder, frames, ext="jpg", names=None):
    os.makedirs(folder, exist_ok=True)
    names = names or [f"f_{i}.{ext}" for i in range(len(frames))]
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(os.path.join(folder, name))
    return folder


def truncate(path, keep_fraction=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: int(len(data) * keep_fraction)])
    return path


def write_vae_folder(folder, block_out_channels=(8, 8, 8, 8), groups=4, layers_per_block=1, seed=0):
    """A diffusers-format AutoencoderKL folder with random weights (8x downsampling by default)."""
    import json

    import mindspore as ms
    from safetensors.numpy import save_file

    from latte_core import AutoencoderKL

    ms.set_seed(seed)
    config = {"block_out_channels": list(block_out_channels), "layers_per_block": layers_per_block,
              "norm_num_groups": groups, "latent_channels": 4, "scaling_factor": 0.18215}
    vae = AutoencoderKL.from_config(config)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle)
    save_file({p.name: p.asnumpy() for p in vae.get_parameters()},
              os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    return folder
