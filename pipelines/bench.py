"""`latte bench ingest` and `latte bench cache`: pipeline stages against their plain baselines."""
import os
import tempfile
import time

import numpy as np

from .ingest import discover, run_ingest


def plain_decode(inputs):
    """Decode every frame of every input sequentially in this process (the baseline)."""
    import decord
    from PIL import Image
    from latte_toolkit.datasets.video import list_frame_files

    videos = frames = 0
    for item in inputs:
        try:
            if item["kind"] == "frames":
                for path in list_frame_files(item["path"]):
                    with Image.open(path) as image:
                        image.load()
                    frames += 1
            else:
                reader = decord.VideoReader(item["path"], num_threads=1)
                for _ in range(len(reader)):
                    reader.next()
                    frames += 1
            videos += 1
        except Exception:  # broken inputs are skipped by the baseline; ingest records them
            continue
    return videos, frames


def _make_frame_folders(root, count):
    from PIL import Image
    image = Image.new("RGB", (8, 8), (40, 90, 200))
    for i in range(count):
        folder = os.path.join(root, f"{i // 1000:03d}", f"v{i:05d}")
        os.makedirs(folder)
        image.save(os.path.join(folder, "f_0.png"))


def bench_ingest(sources, workers=0, replan_inputs=10000):
    """Videos/s and frames/s of `ingest --verify` and of a plain decode, plus re-plan seconds."""
    import tqdm.auto  # noqa: F401  (one-time imports, paid once per process, are kept out of the timings)
    import pyarrow.parquet  # noqa: F401

    inputs = [item for item in discover(sources) if not item.get("failure")]
    start = time.perf_counter()
    plain_videos, plain_frames = plain_decode(inputs)
    plain_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        summary = run_ingest(sources, os.path.join(scratch, "out"), verify=True, workers=workers, progress=False)
        ingest_s = time.perf_counter() - start
        result = {
            "bench": "ingest", "inputs": len(inputs), "workers": workers,
            "plain_decode": {"videos": plain_videos, "frames": plain_frames, "seconds": round(plain_s, 3),
                             "videos_per_s": round(plain_videos / plain_s, 2),
                             "frames_per_s": round(plain_frames / plain_s, 1)},
            "ingest_verify": {"videos": summary["ok"], "frames": summary["frames"], "seconds": round(ingest_s, 3),
                              "videos_per_s": round(summary["ok"] / ingest_s, 2),
                              "frames_per_s": round(summary["frames"] / ingest_s, 1)},
        }
        cores = max(workers, 1)
        result["ingest_to_plain_frames_per_s_per_core"] = round(
            result["ingest_verify"]["frames_per_s"] / cores / max(result["plain_decode"]["frames_per_s"], 1e-9), 3)
        if replan_inputs:
            many = os.path.join(scratch, "many")
            _make_frame_folders(many, replan_inputs)
            run_ingest([many], os.path.join(scratch, "many_out"), workers=0, unit_size=256, progress=False)
            start = time.perf_counter()
            again = run_ingest([many], os.path.join(scratch, "many_out"), workers=0, unit_size=256, progress=False)
            result["replan"] = {"inputs": replan_inputs, "units_run": again["units_run"],
                                "seconds": round(time.perf_counter() - start, 3)}
    return result


def bench_cache(fmt="numpy", vae_dir=None, videos=2, frames=16, size=256, micro_batch=8):
    """End-to-end `latte cache` frames/s against encode-only frames/s of the same VAE on the same,
    already decoded and resized frames, in one process. Without `vae_dir`, a randomly initialised VAE
    of sd-vae-ft-mse's architecture is used."""
    import mindspore as ms

    from latte_toolkit.datasets.video import center_crop_resize, iter_frames, to_pixels, write_mp4
    from latte_core import AutoencoderKL

    from .cache import _vae, run_cache
    from .synthetic import moving_square_frames

    with tempfile.TemporaryDirectory() as scratch:
        if vae_dir is None:
            vae_dir = AutoencoderKL().save_pretrained(os.path.join(scratch, "vae"))
        vae_dir = os.path.abspath(vae_dir)
        for i in range(videos):
            write_mp4(os.path.join(scratch, "src", f"clip_{i}.mp4"),
                      moving_square_frames(frames, height=size, width=size * 4 // 3 // 2 * 2, seed=i))  # 4:3, even
        run_ingest([os.path.join(scratch, "src")], os.path.join(scratch, "ingest"), workers=0, progress=False)
        vae = _vae(vae_dir)  # shared with the cache job below: both run on one compiled network
        pixels = [np.stack([center_crop_resize(f, size) for f in iter_frames(os.path.join(scratch, "src", name), "video")])
                  for name in sorted(os.listdir(os.path.join(scratch, "src")))]
        batches = [to_pixels(np.concatenate(pixels))[i:i + micro_batch]
                   for i in range(0, videos * frames, micro_batch)]
        vae.encode(ms.Tensor(batches[0])).mean.asnumpy()  # compile outside the timings
        start = time.perf_counter()
        for batch in batches:
            posterior = vae.encode(ms.Tensor(batch))
            posterior.mean.asnumpy(), posterior.std.asnumpy()
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        summary = run_cache(os.path.join(scratch, "ingest"), vae_dir, os.path.join(scratch, "cache"), fmt=fmt,
                            image_size=size, workers=0, micro_batch=micro_batch, progress=False)
        end_to_end_s = time.perf_counter() - start
    total = videos * frames
    return {"bench": "cache", "format": fmt, "videos": videos, "frames": total, "size": size,
            "micro_batch": micro_batch, "cached_frames": summary["frames"],
            "encode_only_frames_per_s": round(total / encode_s, 3),
            "end_to_end_frames_per_s": round(summary["frames"] / end_to_end_s, 3),
            "end_to_end_to_encode_only": round((summary["frames"] / end_to_end_s) / (total / encode_s), 3)}


def write_synthetic_cache(out_dir, fmt="numpy", videos=64, frames=128, latent=32, store="posterior",
                          dtype="float16", shard_videos=16, chunk_frames=16, seed=0):
    """A cache folder of random latents, written by the cache stage's own shard writer and ledger (no
    VAE, no videos), for loader benchmarks at sizes real encoding would take days to produce."""
    from latte_toolkit.datasets.cache import fields_for

    from .cache import cache_fingerprint, publish_index, write_shard
    from .jobs import open_job_folder
    from .ledger import Ledger

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
                yield item, video, 0

        spec = {**spec_common, "unit_id": f"s-synthetic{first:09d}"}
        ledger.append(write_shard(spec, arrays(), {"decode": 0.0, "encode": 0.0, "write": 0.0}))
    publish_index(out_dir, ledger.records())
    return out_dir


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


def _loader_figures(cache_dir, loader_options, max_batches, queue):
    """Child process: a warm plain read of every shard file, then the loader, then the loader's own
    per-clip latent arithmetic alone on one thread; reports figures."""
    os.environ.setdefault("GLOG_v", "3")
    from latte_toolkit.datasets.loader import CacheLoader
    from latte_toolkit.train.bench import peak_rss_mb  # the CLI's benchmarks share their helpers

    files = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(cache_dir, "shards"))
                   for name in names)
    _plain_read(files)  # warms the page cache
    plain_bytes, plain_s = _plain_read(files)
    start = time.perf_counter()
    loader = CacheLoader(cache_dir, **loader_options)
    setup_s = time.perf_counter() - start
    stored = loader.cache.read(loader.video_ids[0])
    clip = {field: np.array(stored[field][:loader.plan.num_frames]) for field in loader.fields}
    clip_bytes = sum(array.nbytes for array in clip.values())  # the stored bytes a clip reads
    samples, start = 0, time.perf_counter()
    for number, batch in enumerate(loader):
        samples += len(batch["latent"])
        if max_batches and number + 1 >= max_batches:
            break
    loader_s = time.perf_counter() - start
    # The floor of the loader's work: posterior sampling of clips already in memory, no I/O, no pipeline.
    arithmetic = min(samples, 1000)
    start = time.perf_counter()
    for position in range(arithmetic):
        loader.latent(clip, position)
    arithmetic_s = time.perf_counter() - start
    queue.put({"plain_read": {"bytes": plain_bytes, "seconds": round(plain_s, 3),
                              "MB_per_s": round(plain_bytes / plain_s / 1e6, 1)},
               "loader": {"samples": samples, "seconds": round(loader_s, 3), "setup_seconds": round(setup_s, 3),
                          "samples_per_s": round(samples / loader_s, 1),
                          "MB_per_s": round(samples * clip_bytes / loader_s / 1e6, 1), "clip_bytes": clip_bytes},
               "latent_arithmetic_one_thread": {"samples": arithmetic, "seconds": round(arithmetic_s, 3),
                                                "samples_per_s": round(arithmetic / arithmetic_s, 1),
                                                "MB_per_s": round(arithmetic * clip_bytes / arithmetic_s / 1e6, 1)},
               "peak_rss_mb": round(peak_rss_mb(), 1)})


def bench_loader(cache_dir=None, synthetic_gb=1.0, fmt="numpy", batch_size=4, num_frames=16, sample_stride=1,
                 clips_per_video=None, workers=2, max_batches=0, check="full", posterior="sample"):
    """Loader samples/s and MB/s (stored latent bytes of the frames it delivers) against a plain
    sequential read of the same shard files, page cache warm, and against the loader's latent arithmetic
    alone on one thread, in a fresh process (for its peak RSS).
    Without `cache_dir`, a synthetic cache of `synthetic_gb` GB in format `fmt` is written first."""
    from latte_toolkit.datasets.cache import open_cache
    from latte_toolkit.train.bench import run_in_fresh_process

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
                   "num_parallel_workers": workers, "check": check, "posterior": posterior}
        figures = run_in_fresh_process(_loader_figures, (cache_dir, options, max_batches), "loader")
        info = open_cache(cache_dir).info
    result = {"bench": "loader", "format": info["format"], "store": info["store"], **options,
              "cache_bytes": figures["plain_read"]["bytes"], **figures}
    result["loader_to_plain_MB_per_s"] = round(figures["loader"]["MB_per_s"] / figures["plain_read"]["MB_per_s"], 3)
    result["loader_to_latent_arithmetic"] = round(
        figures["loader"]["samples_per_s"] / figures["latent_arithmetic_one_thread"]["samples_per_s"], 3)
    return result
