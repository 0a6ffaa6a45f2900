"""`latte bench fvd`: videos/s of the I3D (random weights, graph mode) with cd-fvd's preprocessing, and the
cost of one Fréchet distance and one bootstrap round on 400-d features."""
import statistics
import time

import mindspore as ms
import numpy as np

from latte_core.i3d import InceptionI3d, preprocess_i3d
from latte_toolkit.inference.fvd import FeatureStats, bootstrap_fvd, frechet_distance

from .measure import peak_rss_mb, run_in_fresh_process, setup_child


def _fvd_child(frames, size, batch, repeats, seed, device, queue):
    setup_child(device, False)
    model = InceptionI3d()
    model.set_train(False)
    videos = np.random.default_rng(seed).integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)
    pre, calls = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        x = preprocess_i3d(videos)
        pre.append(time.perf_counter() - start)
        start = time.perf_counter()
        model(ms.Tensor(x)).asnumpy()
        calls.append(time.perf_counter() - start)
    median = statistics.median(calls[1:])
    per_video = (median + statistics.median(pre[1:])) / batch
    queue.put({"first_call_s": round(calls[0], 3), "median_call_s": round(median, 4),
               "preprocess_s": round(statistics.median(pre[1:]), 4), "videos_per_s": round(1 / per_video, 4),
               "hours_for_2x2048_clips": round(2 * 2048 * per_video / 3600, 2),
               "peak_rss_mb": round(peak_rss_mb(), 1)})


def bench_fvd(frames=16, size=256, batch=4, repeats=3, seed=0, device="CPU"):
    """The I3D's speed in a fresh process (its own peak RSS), then the distance's in this one."""
    result = {"bench": "fvd", "frames": frames, "size": size, "batch": batch, "device": device}
    result.update(run_in_fresh_process(_fvd_child, (frames, size, batch, repeats, seed, device), "fvd (I3D)"))
    rng = np.random.default_rng(seed)
    real = FeatureStats(rng.normal(size=(2048, 400)), {})
    fake = rng.normal(size=(2048, 400)).astype(np.float32)
    start = time.perf_counter()
    fake_stats = FeatureStats(fake, {})
    frechet_distance(real.mean, real.cov, fake_stats.mean, fake_stats.cov)
    result["distance_s_2048"] = round(time.perf_counter() - start, 4)
    start = time.perf_counter()
    bootstrap_fvd(real, fake, 5, seed)
    result["bootstrap_s_per_round_2048"] = round((time.perf_counter() - start) / 5, 4)
    return result
