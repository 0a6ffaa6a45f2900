"""Fixture writers the benchmarks and the tests share: a latent cache of random values written by the
cache stage's own shard writer and ledger (write_synthetic_cache). The procedural clips are in
synthetic.py, text-encoder folders of random weights in demo_text_encoder.py.
"""
import os

import numpy as np

from latte_toolkit.datasets.cache import fields_for
from latte_toolkit.pipelines.cache import cache_fingerprint, publish_index, write_shard
from latte_toolkit.pipelines.jobs import open_job_folder
from latte_toolkit.pipelines.ledger import Ledger


def write_synthetic_cache(out_dir, fmt="numpy", videos=64, frames=128, latent=32, store="posterior",
                          dtype="float16", shard_videos=16, chunk_frames=16, seed=0, non_finite=()):
    """A cache folder of random latents, written by the cache stage's own shard writer and ledger (no
    VAE, no videos), for loader benchmarks at sizes real encoding would take days to produce, and for tests.
    `non_finite`: video ids (v0000000, ...) whose first frame holds inf, as a cache written before
    `latte cache` refused such videos may (the shard writer stores what it is given)."""
    fields = fields_for(store)
    # sd-vae-ft-mse's latent settings: four stages (8x downsampling), four channels
    vae_config = {"scaling_factor": 0.18215, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512]}
    info = cache_fingerprint(None, latent * 8, store, dtype, fmt, chunk_frames, shard_videos, vae_config=vae_config,
                             vae_sha256="synthetic")
    open_job_folder(out_dir, "cache.json", info, "shards")
    ledger = Ledger(out_dir)
    rng = np.random.default_rng(seed)
    frame_values = 4 * latent * latent
    pool = rng.standard_normal(frame_values * (frames + 64)).astype(dtype)  # windows of it fill the videos
    spec_common = {"out_dir": os.path.abspath(out_dir), "format": fmt, "store": store, "dtype": dtype,
                   "image_size": latent * 8, "downsample_factor": info["downsample_factor"],
                   "latent_channels": info["latent_channels"], "chunk_frames": chunk_frames}
    for first in range(0, videos, shard_videos):
        items = [{"video_id": f"v{i:07d}", "path": "synthetic", "label": i % 10, "caption": None}
                 for i in range(first, min(first + shard_videos, videos))]

        def arrays():
            for item in items:
                shift = int(rng.integers(0, 64 * frame_values))  # not frame-aligned: no two chunks alike
                video = {field: pool[shift:shift + frames * frame_values].reshape(frames, 4, latent, latent)
                         for field in fields}
                if item["video_id"] in non_finite:
                    video = {field: np.concatenate([np.full_like(array[:1], np.inf), array[1:]])
                             for field, array in video.items()}
                yield item, video, 0

        spec = {**spec_common, "unit_id": f"s-synthetic{first:09d}"}
        ledger.append(write_shard(spec, arrays(), {"decode": 0.0, "encode": 0.0, "write": 0.0}))
    publish_index(out_dir, ledger.records())
    return out_dir
