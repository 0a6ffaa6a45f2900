"""`latte bench attention`: peak memory of plain against block-wise attention (forward + backward),
each path in a fresh process."""
import os
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from latte_core.attention import BlockwiseAttention, PlainAttention

from .measure import peak_rss_mb, run_in_fresh_process


def _attention_peak(backend, tokens, head_dim, block_size, queue):
    """Child process: forward + backward of one attention head group; reports RSS figures in MB."""
    os.environ.setdefault("GLOG_v", "3")

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
