"""`latte bench forward`: one denoising forward as sampling runs it, its GFLOP/s over every matmul and
numpy's sgemm floor on the same products, per kernel path (both paths must agree)."""
import statistics
import time

import mindspore as ms
import numpy as np

from latte_core import create_latte, kernels

from .measure import KERNEL_PATHS, combine_paths, median_matmul_seconds, peak_rss_mb, run_in_fresh_process, setup_child


def latte_forward_gemms(model, batch, frames, latent):
    """Every matrix product of one unconditional Latte forward on (batch, frames, C, latent, latent):
    dicts of m, n, k (c (m, n) = a (m, k) · b (k, n)), count (independent products of that shape: the
    heads and sequences of an attention) and what. Attention counts QKᵀ and AV of every head."""
    d, heads, p = model.hidden_size, model.num_heads, model.patch_size
    tokens = (latent // p) ** 2
    rows = batch * frames * tokens
    gemms = [dict(m=rows, n=d, k=model.in_channels * p * p, count=1, what="patch embedding"),
             dict(m=batch, n=d, k=256, count=1, what="timestep MLP 1"),
             dict(m=batch, n=d, k=d, count=1, what="timestep MLP 2")]
    for index in range(len(model.blocks)):
        length, sequences = (tokens, batch * frames) if index % 2 == 0 else (frames, batch * tokens)
        kind = "spatial" if index % 2 == 0 else "temporal"
        gemms += [dict(m=batch, n=6 * d, k=d, count=1, what="adaLN"),
                  dict(m=rows, n=3 * d, k=d, count=1, what="qkv"),
                  dict(m=length, n=length, k=d // heads, count=sequences * heads, what=f"{kind} QK^T"),
                  dict(m=length, n=d // heads, k=length, count=sequences * heads, what=f"{kind} AV"),
                  dict(m=rows, n=d, k=d, count=1, what="attention projection"),
                  dict(m=rows, n=4 * d, k=d, count=1, what="MLP 1"),
                  dict(m=rows, n=d, k=4 * d, count=1, what="MLP 2")]
    gemms += [dict(m=batch, n=2 * d, k=d, count=1, what="final adaLN"),
              dict(m=rows, n=p * p * model.out_channels, k=d, count=1, what="final linear")]
    return gemms


def _numpy_batched_gemm_seconds(m, n, k, count, repeats=3):
    """Median seconds of numpy's matmul of `count` independent (m, k)·(k, n) products (one batched call)."""
    rng = np.random.default_rng(0)
    shape_a, shape_b = ((count, m, k), (count, k, n)) if count > 1 else ((m, k), (k, n))
    a, b = rng.standard_normal(shape_a, dtype=np.float32), rng.standard_normal(shape_b, dtype=np.float32)
    return median_matmul_seconds(a, b, repeats)


def _forward_path(model_name, frames, latent, batch, repeats, seed, device, kernels_on, queue):
    """Child process: time `repeats` denoising forwards (inference, a new x and t each) after the compiling
    one; put the figures, the last output and the model's GEMMs on queue."""
    active = setup_child(device, kernels_on)

    model = create_latte(model_name, input_size=latent, num_frames=frames)
    model.set_train(False)
    rng = np.random.default_rng(seed)
    for param in model.trainable_params():  # DiT's init zeroes the output layer: every weight random instead
        param.set_data(ms.Tensor(rng.normal(0.0, 0.02, param.shape).astype(np.float32)))
    shape = (batch, frames, model.in_channels, latent, latent)
    times = []
    for i in range(repeats + 1):
        x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        t = ms.Tensor(rng.integers(0, 1000, batch).astype(np.int32))
        if i == 1 and active:
            kernels.reset_stats()  # the timed calls only
        start = time.perf_counter()
        out = model(x, t).asnumpy()
        times.append(time.perf_counter() - start)
    gemms = latte_forward_gemms(model, batch, frames, latent)
    flops = sum(2 * g["m"] * g["n"] * g["k"] * g["count"] for g in gemms)
    median = statistics.median(times[1:])
    # microseconds: a tiny forward takes a few ms, where 4 decimals would put gflops's own seconds 2 % off
    figures = {"kernels": "on" if active else "off", "first_call_s": round(times[0], 3),
               "median_forward_s": round(median, 6), "forward_times_s": [round(s, 4) for s in times[1:]],
               "gflops": round(flops / median / 1e9, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if active:  # numpy's sgemm on the same products, in the same process, right after
        figures["gemm"] = kernels.gemm_in_use()
        figures["kernel_ms_per_call"] = {name: round(1000 * entry["seconds"] / repeats, 1)
                                         for name, entry in kernels.stats().items() if entry["calls"]}
        numpy_seconds = sum(_numpy_batched_gemm_seconds(g["m"], g["n"], g["k"], g["count"]) for g in gemms)
        figures["matmul_floor"] = {
            "gflop": round(flops / 1e9, 2), "numpy_seconds_same_gemms": round(numpy_seconds, 4),
            "numpy_gflops": round(flops / numpy_seconds / 1e9, 1),
            "forward_to_numpy_floor": round(numpy_seconds / median, 3),
            "gemms": len(gemms)}
    queue.put((figures, out))


def bench_forward(model_name="Latte-S/2", frames=16, latent=32, batch=2, repeats=3, seed=0, device="CPU",
                  kernels=KERNEL_PATHS):
    """Median seconds of one denoising forward (graph mode, inference, float32, random weights: every one
    drawn from N(0, 0.02²) by a generator seeded with `seed`), its GFLOP/s over every
    matmul (2·M·N·K; QKᵀ and AV included) and, with the kernels on, that rate against numpy's sgemm on the
    same products in the same process (forward_to_numpy_floor: numpy's seconds for the products alone over
    the forward's). With both kernel paths, the outputs of the last forward (same weights, same x and t)
    must agree within 1e-4 of the output's largest magnitude (float32 sums in another order differ by
    ~1e-6 of it), else it raises."""
    if repeats < 1:
        raise ValueError("--repeats must be at least 1 (the first, compiling call is not counted)")
    runs = [run_in_fresh_process(_forward_path, (model_name, frames, latent, batch, repeats, seed, device,
                                                 path == "on"), f"forward (kernels {path})") for path in kernels]
    result = {"bench": "forward", "model": model_name, "frames": frames, "latent": latent, "batch": batch,
              "repeats": repeats, "device": device}
    paths = [figures for figures, _ in runs]
    if len(runs) == 2:
        (_, first), (_, second) = runs
        difference = float(np.abs(first - second).max() / np.abs(second).max())
        if not difference <= 1e-4:  # NaN too
            raise RuntimeError(f"the kernels-on forward differs from the kernels-off one by {difference:.2e} of "
                               f"its largest value (bound 1e-4)")
        result["kernels_on_vs_off_max_rel"] = float(f"{difference:.3g}")
    return combine_paths(result, paths, "median_forward_s")
