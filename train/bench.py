"""`latte bench step`: time the compiled training step of a Latte variant on random latents."""
import resource
import statistics
import time

import numpy as np


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_step(model_name="Latte-S/2", frames=8, latent=16, batch=2, steps=5, flash_attention=False, seed=0):
    """Median seconds of forward + diffusion loss + backward + AdamW, in GRAPH_MODE, float32."""
    import mindspore as ms
    from latte_core import create_latte
    from latte_core.diffusion import create_diffusion
    from train.step import DiffusionLoss, TrainStep, Updater

    if steps < 2:
        raise ValueError("--steps must be at least 2 (the first step includes graph compilation)")
    ms.set_seed(seed)
    model = create_latte(model_name, input_size=latent, num_frames=frames, enable_flash_attention=flash_attention)
    diffusion = create_diffusion("")
    step = TrainStep(DiffusionLoss(model, diffusion), Updater(model.trainable_params(), learning_rate=1e-4))
    rng = np.random.default_rng(seed)
    shape = (batch, frames, model.in_channels, latent, latent)
    times = []
    for _ in range(steps):
        x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        t = ms.Tensor(rng.integers(0, diffusion.num_timesteps, batch).astype(np.int32))
        noise = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        start = time.perf_counter()
        loss, _, _ = step(x, t, noise)
        loss.asnumpy()  # wait for the step to finish
        times.append(time.perf_counter() - start)
    return {
        "bench": "step", "model": model_name, "frames": frames, "latent": latent, "batch": batch,
        "flash_attention": flash_attention, "device": ms.get_context("device_target"),
        "steps": steps, "first_step_s": round(times[0], 4),
        "median_step_s": round(statistics.median(times[1:]), 4),
        "step_times_s": [round(s, 4) for s in times[1:]], "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_vae(size=256, batch=4, repeats=3, dtype="float32", seed=0):
    """Frames per second of AutoencoderKL.encode (posterior moments) with sd-vae-ft-mse's shape."""
    import mindspore as ms
    from latte_core import AutoencoderKL

    ms.set_seed(seed)
    vae = AutoencoderKL()  # diffusers' defaults are sd-vae-ft-mse's architecture
    vae.set_compute_dtype(getattr(ms, dtype))
    frames = np.random.default_rng(seed).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        vae.encode(ms.Tensor(frames)).mean.asnumpy()
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    return {
        "bench": "vae", "size": size, "batch": batch, "dtype": dtype, "device": ms.get_context("device_target"),
        "first_call_s": round(times[0], 3), "median_call_s": round(median, 3),
        "encode_frames_per_s": round(batch / median, 4), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _attention_peak(backend, tokens, head_dim, block_size, queue):
    """Child process: forward + backward of one attention head group; reports RSS figures in MB."""
    import os
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    from mindspore import Tensor, nn
    from latte_core.attention import BlockwiseAttention, PlainAttention

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    q, k, v = (Tensor(rng.standard_normal((1, 1, tokens, head_dim)).astype(np.float32)) for _ in range(3))
    scale = head_dim ** -0.5
    core = PlainAttention(scale) if backend == "plain" else BlockwiseAttention(scale, block_size)

    class Objective(nn.Cell):
        def __init__(self):
            super().__init__()
            self.core = core

        def construct(self, q, k, v):
            out = self.core(q, k, v)
            if backend != "plain":
                out = out[0]
            return out.sum()

    grad_fn = ms.grad(Objective(), grad_position=(0, 1, 2))
    baseline = peak_rss_mb()
    start = time.perf_counter()
    grads = grad_fn(q, k, v)
    grads[0].asnumpy()
    queue.put({"peak_rss_mb": round(peak_rss_mb(), 1), "baseline_rss_mb": round(baseline, 1),
               "seconds": round(time.perf_counter() - start, 3)})


def run_in_fresh_process(target, args, what):
    """Run target(*args, queue) in a spawned process (its own peak RSS) and return what it put on the
    queue; a child that dies first raises instead of leaving the caller waiting."""
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=target, args=tuple(args) + (results,))
    process.start()
    while True:
        try:
            figures = results.get(timeout=1.0)
            break
        except queues.Empty:
            if not process.is_alive():
                raise RuntimeError(f"{what} benchmark process failed (exit code {process.exitcode})") from None
    process.join()
    return figures


def bench_attention(tokens=16384, head_dim=64, block_size=512):
    """Peak memory of plain vs block-wise attention (forward + backward), each in a fresh process."""
    result = {"bench": "attention", "tokens": tokens, "head_dim": head_dim, "block_size": block_size}
    for backend in ("plain", "flash"):
        figures = run_in_fresh_process(_attention_peak, (backend, tokens, head_dim, block_size),
                                       f"{backend} attention")
        figures["attention_mb"] = round(figures["peak_rss_mb"] - figures["baseline_rss_mb"], 1)
        result[backend] = figures
    result["flash_to_plain_attention_mb"] = round(
        result["flash"]["attention_mb"] / max(result["plain"]["attention_mb"], 1e-9), 4)
    result["flash_to_plain_peak_rss"] = round(result["flash"]["peak_rss_mb"] / result["plain"]["peak_rss_mb"], 4)
    return result
