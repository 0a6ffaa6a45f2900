"""`latte bench vae`: frames/s of the VAE encoder at sd-vae-ft-mse's shape, per kernel path."""
import statistics
import time

import mindspore as ms
import numpy as np

from latte_core import AutoencoderKL, kernels

from .measure import KERNEL_PATHS, combine_paths, peak_rss_mb, run_in_fresh_process, setup_child


def _vae_path(size, batch, repeats, dtype, seed, device, kernels_on, queue):
    active = setup_child(device, kernels_on)

    ms.set_seed(seed)
    vae = AutoencoderKL()  # diffusers' defaults are sd-vae-ft-mse's architecture
    vae.set_compute_dtype(getattr(ms, dtype))
    frames = np.random.default_rng(seed).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    times = []
    for i in range(repeats + 1):
        if i == 1 and active:
            kernels.reset_stats()
        start = time.perf_counter()
        vae.encode(ms.Tensor(frames)).mean.asnumpy()
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    figures = {"kernels": "on" if active else "off", "first_call_s": round(times[0], 3),
               "median_call_s": round(median, 3), "encode_frames_per_s": round(batch / median, 4),
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    if active:
        figures["kernel_ms_per_call"] = {name: round(1000 * entry["seconds"] / repeats, 1)
                                         for name, entry in kernels.stats().items() if entry["calls"]}
    queue.put(figures)


def bench_vae(size=256, batch=4, repeats=3, dtype="float32", seed=0, device="CPU", kernels=KERNEL_PATHS):
    """Frames per second of AutoencoderKL.encode (posterior moments) with sd-vae-ft-mse's shape, for
    each kernel path, each in a fresh process."""
    paths = [run_in_fresh_process(_vae_path, (size, batch, repeats, dtype, seed, device, path == "on"),
                                  f"vae (kernels {path})") for path in kernels]
    result = {"bench": "vae", "size": size, "batch": batch, "dtype": dtype, "device": device}
    return combine_paths(result, paths, "median_call_s")
