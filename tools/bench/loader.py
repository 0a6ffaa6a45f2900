"""`latte bench loader`: loader samples/s, frames/s and MB/s against a plain read of the same shard files
and against the loader's own latent arithmetic, in a fresh process (its peak RSS)."""
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.loader import CacheLoader

from ..fixtures import write_synthetic_cache
from .measure import peak_rss_mb, run_in_fresh_process


def _plain_read(files):
    """Bytes and seconds of reading every file once, sequentially, in 8 MB blocks."""
    size, start = 0, time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while True:
                block = handle.read(8 << 20)
                if not block:
                    break
                size += len(block)
    return size, time.perf_counter() - start


def _latent_arithmetic(loader, sample, samples, threads):
    """Samples/s of the loader's own latent arithmetic alone (posterior sampling and scaling of a
    sample already in memory: its clip, then its images; no I/O, no pipeline) over `samples`
    positions, shared by `threads` threads as the loader's workers share theirs."""
    clip, images = sample

    def arithmetic(positions):
        for position in positions:
            loader.sample_latent(clip, position, images)

    shares = np.array_split(np.arange(samples), threads)
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(arithmetic, shares))
        seconds = time.perf_counter() - start
    return {"threads": threads, "samples": samples, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1)}


def _timed_batches(batches, max_batches, first_number):
    """(samples, seconds) of the batches (numbered from first_number), up to batch max_batches if set."""
    samples, start = 0, time.perf_counter()
    for number, batch in enumerate(batches, start=first_number):
        samples += len(batch["latent"])
        if max_batches and number >= max_batches:
            break
    return samples, time.perf_counter() - start


def _loader_figures(cache_dir, loader_options, max_batches, queue):
    """Child process: a warm plain read of every shard file, then two epochs of the loader (the first
    after its first batch, then the second whole), then the loader's own latent arithmetic alone over as
    many samples as the second delivered, on as many threads as the loader has workers and on one;
    reports figures."""
    os.environ.setdefault("GLOG_v", "3")

    files = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(cache_dir, "shards"))
                   for name in names)
    _plain_read(files)  # warms the page cache
    plain_bytes, plain_s = _plain_read(files)
    start = time.perf_counter()
    loader = CacheLoader(cache_dir, **loader_options)
    setup_s = time.perf_counter() - start
    stored = loader.cache.read(loader.video_ids[0])
    frames, images = loader.plan.num_frames, loader.use_image_num
    clip = {field: np.array(stored[field][:frames]) for field in loader.fields}
    image_frames = ({field: stored[field][np.arange(images) % len(stored[field])] for field in loader.fields}
                    if images else None)
    clip_bytes = sum(array.nbytes for array in clip.values()) * (frames + images) // frames  # stored bytes a sample reads
    batches = iter(loader)
    start = time.perf_counter()
    first_samples = len(next(batches)["latent"])
    first_s = time.perf_counter() - start  # MindSpore's dataset engine starts with a process's first pipeline
    samples, loader_s = _timed_batches(batches, max_batches, 2)
    if not samples:  # an epoch of one batch: nothing but the first to time
        samples, loader_s = first_samples, first_s
    # then the next epoch whole (its new pipeline's start included): the rate a training run sustains,
    # once the allocator and MindSpore's engine are warm (the first epoch ran 5-20 % slower)
    steady_samples, steady_s = _timed_batches(iter(loader), max_batches, 1)
    # as many samples as the loader delivered: a shorter baseline (it was 1000 samples, half a second)
    # moved the ratio by ±0.05 from run to run
    workers = loader.num_parallel_workers
    same_threads = _latent_arithmetic(loader, (clip, image_frames), steady_samples, workers)
    one_thread = same_threads if workers == 1 else _latent_arithmetic(loader, (clip, image_frames), steady_samples, 1)
    def rates(count, seconds):
        return {"samples": count, "seconds": round(seconds, 3), "samples_per_s": round(count / seconds, 1),
                "frames_per_s": round(count * (frames + images) / seconds, 1),
                "MB_per_s": round(count * clip_bytes / seconds / 1e6, 1)}
    queue.put({"plain_read": {"bytes": plain_bytes, "seconds": round(plain_s, 3),
                              "MB_per_s": round(plain_bytes / plain_s / 1e6, 1)},
               "loader": {**rates(steady_samples, steady_s), "setup_seconds": round(setup_s, 3),
                          "clip_bytes": clip_bytes},
               "loader_first_epoch": {**rates(samples, loader_s), "first_batch_seconds": round(first_s, 3)},
               "latent_arithmetic": same_threads, "latent_arithmetic_one_thread": one_thread,
               "peak_rss_mb": round(peak_rss_mb(), 1)})


def bench_loader(cache_dir=None, synthetic_gb=1.0, fmt="numpy", batch_size=4, num_frames=16, sample_stride=1,
                 clips_per_video=None, workers=2, max_batches=0, check="full", posterior="sample", images=0):
    """Loader samples/s, frames/s and MB/s (stored latent bytes of the frames it delivers) against a
    plain sequential read of the same shard files, page cache warm, and against the loader's latent
    arithmetic alone on as many threads as the loader's workers (`loader_to_latent_arithmetic`) and on
    one, in a fresh process (for its peak RSS). `loader`: the second epoch whole, the rate a run sustains;
    `loader_first_epoch`: the first after its first batch, whose wait (the start of MindSpore's dataset
    engine, once per process) is first_batch_seconds (`first_epoch_to_latent_arithmetic`). `images`: the
    loader's use_image_num (a sample is then its clip and that many single frames of other videos).
    Without `cache_dir`, a synthetic cache of `synthetic_gb` GB in format `fmt` is written first."""
    with tempfile.TemporaryDirectory() as scratch:
        frames = 128
        if cache_dir is None:
            frame_bytes = 2 * 4 * 32 * 32 * 2  # posterior mean + std, float16, 32x32 latents
            videos = max(1, int(synthetic_gb * 1e9 / (frames * frame_bytes)))
            cache_dir = write_synthetic_cache(os.path.join(scratch, "cache"), fmt, videos, frames)
        else:
            cache = open_cache(cache_dir)
            frames = int(np.median([cache.entries[v]["frames"] for v in cache.ids]))
        options = {"batch_size": batch_size, "num_frames": num_frames, "sample_stride": sample_stride,
                   "clips_per_video": clips_per_video or max(1, frames // num_frames),
                   "num_parallel_workers": workers, "check": check, "posterior": posterior, "use_image_num": images}
        figures = run_in_fresh_process(_loader_figures, (cache_dir, options, max_batches), "loader")
        info = open_cache(cache_dir).info
    result = {"bench": "loader", "format": info["format"], "store": info["store"], **options,
              "cache_bytes": figures["plain_read"]["bytes"], **figures}
    result["loader_to_plain_MB_per_s"] = round(figures["loader"]["MB_per_s"] / figures["plain_read"]["MB_per_s"], 3)
    for key, loader, baseline in (
            ("loader_to_latent_arithmetic", "loader", "latent_arithmetic"),
            ("loader_to_latent_arithmetic_one_thread", "loader", "latent_arithmetic_one_thread"),
            ("first_epoch_to_latent_arithmetic", "loader_first_epoch", "latent_arithmetic")):
        result[key] = round(figures[loader]["samples_per_s"] / figures[baseline]["samples_per_s"], 3)
    return result
