"""The measuring every benchmark shares: a child process per measured path (run_in_fresh_process: its
own compile caches and peak RSS), MindSpore set up in it with the CPU kernels on or off (setup_child),
the kernels' per-call figures and the dense layers' rate against numpy's sgemm on the same problems
(kernel_figures, median_matmul_seconds), peak RSS, and the kernels-on / kernels-off result layout
(combine_paths).
"""
import multiprocessing
import os
import queue as queues
import resource
import statistics
import time

import mindspore as ms
import numpy as np

from latte_core import kernels
from latte_core.runtime import prefer_avx2_onednn

KERNEL_PATHS = ("on", "off")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def setup_child(device, kernels_on):
    """In a spawned benchmark process: MindSpore on `device` in graph mode, the kernels on or off."""
    os.environ.setdefault("GLOG_v", "3")
    prefer_avx2_onednn()
    ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE)
    kernels.set_enabled(kernels_on)
    return kernels.enabled()


def kernel_figures(steps):
    """Per-step milliseconds of each kernel, and the dense layers' matmul rate in the step against
    numpy's BLAS on the same sgemm problems, timed right after in the same process."""
    stats = {name: entry for name, entry in kernels.stats().items() if entry["calls"]}
    figures = {"gemm": kernels.gemm_in_use(),
               "kernel_ms_per_step": {name: round(1000 * entry["seconds"] / steps, 2) for name, entry in stats.items()}}
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
    return median_matmul_seconds(a, b, repeats)


def median_matmul_seconds(a, b, repeats):
    """Median seconds of np.matmul(a, b) into a preallocated output, after one untimed call."""
    out = np.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def combine_paths(result, paths, time_key):
    """The on-path figures at the top level (the path models use by default), the other path under
    "kernels_off", and the speed-up between them."""
    first = paths[0]
    result.update(first)
    if len(paths) == 2:
        result["kernels_off"] = paths[1]
        result["kernels_speedup"] = round(paths[1][time_key] / paths[0][time_key], 3)
    return result


def run_in_fresh_process(target, args, what):
    """Run target(*args, queue) in a spawned process (its own peak RSS) and return what it put on the
    queue; a child that dies first raises instead of leaving the caller waiting."""
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
