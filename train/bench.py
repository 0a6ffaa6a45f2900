"""`latte bench step|vae|attention`: the compiled training step, the VAE encoder and attention memory.

Step and VAE timings run each kernel path (latte_core.kernels on / off) in a fresh process, so that
both are measured in the same run with their own compile caches and peak RSS.
"""
import resource
import statistics
import time

import numpy as np

KERNEL_PATHS = ("on", "off")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup_child(device, kernels_on):
    """In a spawned benchmark process: MindSpore on `device` in graph mode, the kernels on or off."""
    import os
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    from latte_core import kernels
    from latte_core.runtime import prefer_avx2_onednn
    prefer_avx2_onednn()
    ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE)
    kernels.set_enabled(kernels_on)
    return kernels.enabled()


def _kernel_figures(steps):
    """Per-step milliseconds of each kernel, and the dense layers' matmul rate in the step against
    numpy's BLAS on the same sgemm problems, timed right after in the same process."""
    from latte_core import kernels
    stats = {name: entry for name, entry in kernels.stats().items() if entry["calls"]}
    figures = {"kernel_ms_per_step": {name: round(1000 * entry["seconds"] / steps, 2) for name, entry in stats.items()}}
    dense = [stats[name] for name in ("dense_forward", "dense_backward") if name in stats]
    shapes = kernels.gemm_shapes()
    if dense and shapes:
        flops = sum(entry["flops"] for entry in dense)
        numpy_seconds = sum(shape["calls"] * _numpy_gemm_seconds(shape) for shape in shapes)
        in_step = flops / sum(entry["seconds"] for entry in dense) / 1e9
        figures["matmul"] = {
            "gflops_in_step": round(in_step, 1), "numpy_gflops_same_shapes": round(flops / numpy_seconds / 1e9, 1),
            "ratio_to_numpy": round(in_step / (flops / numpy_seconds / 1e9), 3), "distinct_shapes": len(shapes),
            "note": "dense kernel time includes its bias copy and bias-gradient sums"}
    return figures


def _numpy_gemm_seconds(shape, repeats=5):
    """Median seconds of numpy's matmul on one recorded sgemm problem (with its transposes)."""
    rng = np.random.default_rng(0)
    m, n, k = shape["m"], shape["n"], shape["k"]
    a = rng.standard_normal((k, m) if shape["trans_a"] else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if shape["trans_b"] else (k, n), dtype=np.float32)
    a, b = (a.T if shape["trans_a"] else a), (b.T if shape["trans_b"] else b)
    out = np.empty((m, n), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_path(model_name, frames, latent, batch, steps, flash_attention, seed, device, kernels_on, queue):
    """Child process: time `steps` training steps with the kernels on or off; put the figures on queue."""
    active = _setup_child(device, kernels_on)
    import mindspore as ms
    from latte_core import create_latte, kernels
    from latte_core.diffusion import create_diffusion
    from latte_toolkit.train.step import DiffusionLoss, TrainStep, Updater

    ms.set_seed(seed)
    model = create_latte(model_name, input_size=latent, num_frames=frames, enable_flash_attention=flash_attention)
    diffusion = create_diffusion("")
    step = TrainStep(DiffusionLoss(model, diffusion), Updater(model.trainable_params(), learning_rate=1e-4))
    rng = np.random.default_rng(seed)
    shape = (batch, frames, model.in_channels, latent, latent)
    times = []
    for i in range(steps):
        x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        t = ms.Tensor(rng.integers(0, diffusion.num_timesteps, batch).astype(np.int32))
        noise = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        if i == 1 and active:
            kernels.reset_stats()  # count the timed steps only, not the compiling one
        start = time.perf_counter()
        loss, _, _ = step(x, t, noise)
        loss.asnumpy()  # wait for the step to finish
        times.append(time.perf_counter() - start)
    figures = {"kernels": "on" if active else "off", "first_step_s": round(times[0], 4),
               "median_step_s": round(statistics.median(times[1:]), 4),
               "step_times_s": [round(s, 4) for s in times[1:]], "peak_rss_mb": round(peak_rss_mb(), 1)}
    if active:
        figures.update(_kernel_figures(steps - 1))
    queue.put(figures)


def _combine(result, paths, time_key):
    """The on-path figures at the top level (the path models use by default), the other path under
    "kernels_off", and the speed-up between them."""
    first = paths[0]
    result.update(first)
    if len(paths) == 2:
        result["kernels_off"] = paths[1]
        result["kernels_speedup"] = round(paths[1][time_key] / paths[0][time_key], 3)
    return result


def bench_step(model_name="Latte-S/2", frames=8, latent=16, batch=2, steps=5, flash_attention=False, seed=0,
               device="CPU", kernels=KERNEL_PATHS):
    """Median seconds of forward + diffusion loss + backward + AdamW, in GRAPH_MODE, float32, for each
    kernel path in `kernels` ("on", "off"), each in a fresh process."""
    if steps < 2:
        raise ValueError("--steps must be at least 2 (the first step includes graph compilation)")
    paths = [run_in_fresh_process(_step_path, (model_name, frames, latent, batch, steps, flash_attention, seed,
                                               device, path == "on"), f"step (kernels {path})") for path in kernels]
    result = {"bench": "step", "model": model_name, "frames": frames, "latent": latent, "batch": batch,
              "flash_attention": flash_attention, "device": device, "steps": steps}
    return _combine(result, paths, "median_step_s")


def _vae_path(size, batch, repeats, dtype, seed, device, kernels_on, queue):
    active = _setup_child(device, kernels_on)
    import mindspore as ms
    from latte_core import AutoencoderKL, kernels

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
    return _combine(result, paths, "median_call_s")


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
    import os
    import queue as queues

    # Loading MindSpore's C++ side sets OMP_NUM_THREADS=1 in this process's C environment (not in
    # os.environ); a spawned child would inherit it and run its BLAS on one core. Unless the user
    # set it, the child gets the default.
    if "OMP_NUM_THREADS" not in os.environ:
        os.unsetenv("OMP_NUM_THREADS")
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
