"""`latte bench ...`: every benchmark, each printing one JSON line.

    ingest, cache, loader   the pipeline stages against their plain baselines
    step, vae, attention    the compiled training step, the VAE encoder and attention memory

Step and VAE timings run each kernel path (latte_core.kernels on / off) in a fresh process, so that
both are measured in the same run with their own compile caches and peak RSS.
"""
import os
import resource
import shutil
import statistics
import tempfile
import time

import numpy as np

from latte_toolkit.pipelines.ingest import discover, run_ingest


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


# random-weight text encoders `bench cache --text-encoder` builds: (width, layers, heads)
BENCH_TEXT_ENCODERS = {"clip-l": (768, 12, 12),  # CLIP ViT-L/14's text tower (Stable Diffusion 1.x's)
                       "small": (64, 4, 4)}
CLIP_VOCAB_SIZE = 49408


def _bench_text_encoder(choice, scratch):
    """(folder, description) of `choice`: a BENCH_TEXT_ENCODERS name (written with random weights) or a
    text-encoder folder."""
    from .demo_text_encoder import byte_level_vocabulary, write_random_text_encoder
    if choice not in BENCH_TEXT_ENCODERS:
        return os.path.abspath(choice), {"folder": os.path.abspath(choice)}
    width, layers, heads = BENCH_TEXT_ENCODERS[choice]
    folder = write_random_text_encoder(os.path.join(scratch, f"text-{choice}"),
                                       byte_level_vocabulary(size=CLIP_VOCAB_SIZE), [],
                                       hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads)
    return folder, {"name": choice, "width": width, "layers": layers, "heads": heads,
                    "vocab_size": CLIP_VOCAB_SIZE, "random_weights": True}


def _write_captioned_clips(folder, videos, frames, size):
    """`videos` moving-square H.264 clips (4:3) and captions.csv giving each a caption of its own."""
    import csv
    from latte_toolkit.datasets.video import write_mp4

    from .synthetic import DIRECTIONS, SKY_COLOURS, cloud_caption, moving_square_frames

    rows = []
    for i in range(videos):
        write_mp4(os.path.join(folder, f"clip_{i}.mp4"),
                  moving_square_frames(frames, height=size, width=size * 4 // 3 // 2 * 2, seed=i))  # 4:3, even
        direction = list(DIRECTIONS)[i % len(DIRECTIONS)]
        colour = list(SKY_COLOURS)[i // len(DIRECTIONS) % len(SKY_COLOURS)]
        rows.append((f"clip_{i}.mp4", f"{cloud_caption(direction, colour)}, clip {i}"))
    path = os.path.join(folder, "captions.csv")
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("video", "caption")] + rows)
    return path


def _cache_with_and_without_text(ingest, vae_dir, scratch, encoder_dir, repeats, options):
    """Cache the same manifest without and with caption embeddings, `repeats` times each, the two
    interleaved (their order alternating), after one untimed pair (graph compiles, page cache). Per run:
    the job's frames/s, its frames/s after the setup (validating the VAE and the encoder, the empty
    prompt's embedding; what a longer job amortises), the setup seconds and the text encoder's seconds
    in the shards."""
    from latte_toolkit.datasets.cache import read_ledger

    from latte_toolkit.pipelines.cache import run_cache

    runs = {False: [], True: []}
    for repeat in range(repeats + 1):
        for with_text in ((True, False) if repeat % 2 else (False, True)):
            out = os.path.join(scratch, f"cache-{repeat}-{'text' if with_text else 'plain'}")
            summary = run_cache(ingest, vae_dir, out, workers=0, progress=False,
                                text_encoder=encoder_dir if with_text else None, **options)
            text_seconds = sum(record.get("text", {}).get("seconds", 0.0) for record in read_ledger(out))
            shutil.rmtree(out)
            if repeat:
                run = {"job_frames_per_s": summary["frames"] / summary["seconds"],
                       "after_setup_frames_per_s": summary["frames"] / (summary["seconds"]
                                                                        - summary["setup_seconds"]),
                       "setup_seconds": summary["setup_seconds"], "text_encode_seconds": text_seconds}
                runs[with_text].append({key: round(value, 3) for key, value in run.items()})

    def medians(values):
        return {key: round(statistics.median(run[key] for run in values), 3) for key in values[0]}

    plain, text = medians(runs[False]), medians(runs[True])
    return {"without_text": plain, "with_text": text,
            "with_to_without_job_frames_per_s": round(text["job_frames_per_s"] / plain["job_frames_per_s"], 4),
            "with_to_without_after_setup_frames_per_s": round(
                text["after_setup_frames_per_s"] / plain["after_setup_frames_per_s"], 4),
            "runs": {"without_text": runs[False], "with_text": runs[True]}}


def bench_cache(fmt="numpy", vae_dir=None, videos=2, frames=16, size=256, micro_batch=8, text_encoder=None,
                repeats=3):
    """End-to-end `latte cache` frames/s against encode-only frames/s of the same VAE on the same,
    already decoded and resized frames, in one process. Without `vae_dir`, a randomly initialised VAE
    of sd-vae-ft-mse's architecture is used. With `text_encoder` ("clip-l", "small": random weights,
    see BENCH_TEXT_ENCODERS; or a folder), also the job with and without caption embeddings (a caption
    of its own per video), `repeats` times each, interleaved, medians and their ratios."""
    import mindspore as ms

    from latte_toolkit.datasets.video import center_crop_resize, iter_frames, to_pixels
    from latte_core import AutoencoderKL

    from latte_toolkit.pipelines.cache import _vae, run_cache

    with tempfile.TemporaryDirectory() as scratch:
        if vae_dir is None:
            vae_dir = AutoencoderKL().save_pretrained(os.path.join(scratch, "vae"))
        vae_dir = os.path.abspath(vae_dir)
        captions = _write_captioned_clips(os.path.join(scratch, "src"), videos, frames, size)
        run_ingest([captions], os.path.join(scratch, "ingest"), workers=0, progress=False)
        vae = _vae(vae_dir)  # shared with the cache job below: both run on one compiled network
        clips = sorted(name for name in os.listdir(os.path.join(scratch, "src")) if name.endswith(".mp4"))
        pixels = [np.stack([center_crop_resize(f, size) for f in iter_frames(os.path.join(scratch, "src", name), "video")])
                  for name in clips]
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
        result = {"bench": "cache", "format": fmt, "videos": videos, "frames": total, "size": size,
                  "micro_batch": micro_batch, "cached_frames": summary["frames"],
                  "encode_only_frames_per_s": round(total / encode_s, 3),
                  "end_to_end_frames_per_s": round(summary["frames"] / end_to_end_s, 3),
                  "end_to_end_to_encode_only": round((summary["frames"] / end_to_end_s) / (total / encode_s), 3)}
        if text_encoder is not None:
            encoder_dir, result["text_encoder"] = _bench_text_encoder(text_encoder, scratch)
            load_before = os.getloadavg()
            result["text"] = _cache_with_and_without_text(
                os.path.join(scratch, "ingest"), vae_dir, scratch, encoder_dir, repeats,
                {"fmt": fmt, "image_size": size, "micro_batch": micro_batch})
            result["text"]["load_average_1min"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return result


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
    from concurrent.futures import ThreadPoolExecutor
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


def _loader_figures(cache_dir, loader_options, max_batches, queue):
    """Child process: a warm plain read of every shard file, then the loader, then the loader's own
    latent arithmetic alone, on as many threads as the loader has workers and on one; reports figures."""
    os.environ.setdefault("GLOG_v", "3")
    from latte_toolkit.datasets.loader import CacheLoader

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
    samples, start = 0, time.perf_counter()
    for number, batch in enumerate(batches, start=2):
        samples += len(batch["latent"])
        if max_batches and number >= max_batches:
            break
    loader_s = time.perf_counter() - start
    if not samples:  # an epoch of one batch: nothing but the first to time
        samples, loader_s = first_samples, first_s
    arithmetic = min(samples, 1000)
    workers = loader.num_parallel_workers
    same_threads = _latent_arithmetic(loader, (clip, image_frames), arithmetic, workers)
    one_thread = same_threads if workers == 1 else _latent_arithmetic(loader, (clip, image_frames), arithmetic, 1)
    queue.put({"plain_read": {"bytes": plain_bytes, "seconds": round(plain_s, 3),
                              "MB_per_s": round(plain_bytes / plain_s / 1e6, 1)},
               "loader": {"samples": samples, "seconds": round(loader_s, 3), "setup_seconds": round(setup_s, 3),
                          "first_batch_seconds": round(first_s, 3),
                          "samples_per_s": round(samples / loader_s, 1),
                          "frames_per_s": round(samples * (frames + images) / loader_s, 1),
                          "MB_per_s": round(samples * clip_bytes / loader_s / 1e6, 1), "clip_bytes": clip_bytes},
               "latent_arithmetic": same_threads, "latent_arithmetic_one_thread": one_thread,
               "peak_rss_mb": round(peak_rss_mb(), 1)})


def bench_loader(cache_dir=None, synthetic_gb=1.0, fmt="numpy", batch_size=4, num_frames=16, sample_stride=1,
                 clips_per_video=None, workers=2, max_batches=0, check="full", posterior="sample", images=0):
    """Loader samples/s, frames/s and MB/s (stored latent bytes of the frames it delivers) against a
    plain sequential read of the same shard files, page cache warm, and against the loader's latent
    arithmetic alone on as many threads as the loader's workers (`loader_to_latent_arithmetic`) and on
    one, in a fresh process (for its peak RSS). The rates count the batches after the first, whose wait
    (the start of MindSpore's dataset engine, once per process) is first_batch_seconds. `images`: the
    loader's use_image_num (a sample is then its clip and that many single frames of other videos).
    Without `cache_dir`, a synthetic cache of `synthetic_gb` GB in format `fmt` is written first."""
    from latte_toolkit.datasets.cache import open_cache

    with tempfile.TemporaryDirectory() as scratch:
        frames = 128
        if cache_dir is None:
            frame_bytes = 2 * 4 * 32 * 32 * 2  # posterior mean + std, float16, 32x32 latents
            videos = max(1, int(synthetic_gb * 1e9 / (frames * frame_bytes)))
            from .fixtures import write_synthetic_cache
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
    for key, baseline in (("loader_to_latent_arithmetic", "latent_arithmetic"),
                          ("loader_to_latent_arithmetic_one_thread", "latent_arithmetic_one_thread")):
        result[key] = round(figures["loader"]["samples_per_s"] / figures[baseline]["samples_per_s"], 3)
    return result


# ------------------------------------------------------------------------------------------ model benchmarks
KERNEL_PATHS = ("on", "off")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup_child(device, kernels_on):
    """In a spawned benchmark process: MindSpore on `device` in graph mode, the kernels on or off."""
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
    return _median_matmul_seconds(a, b, repeats)


def _median_matmul_seconds(a, b, repeats):
    """Median seconds of np.matmul(a, b) into a preallocated output, after one untimed call."""
    out = np.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_path(model_name, frames, latent, batch, steps, flash_attention, seed, device, kernels_on, images, depth,
               queue):
    """Child process: time `steps` training steps with the kernels on or off; put the figures on queue."""
    active = _setup_child(device, kernels_on)
    import mindspore as ms
    from latte_core import create_latte, kernels
    from latte_core.diffusion import create_diffusion
    from latte_toolkit.train.step import DiffusionLoss, TrainStep, Updater

    ms.set_seed(seed)
    overrides = {} if depth is None else {"depth": depth}
    model = create_latte(model_name, input_size=latent, num_frames=frames, enable_flash_attention=flash_attention,
                         **overrides)
    diffusion = create_diffusion("")
    step = TrainStep(DiffusionLoss(model, diffusion, images), Updater(model.trainable_params(), learning_rate=1e-4))
    rng = np.random.default_rng(seed)
    shape = (batch, frames + images, model.in_channels, latent, latent)
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
               device="CPU", kernels=KERNEL_PATHS, images=0, depth=None):
    """Median seconds of forward + diffusion loss + backward + AdamW, in GRAPH_MODE, float32, for each
    kernel path in `kernels` ("on", "off"), each in a fresh process. `images`: use_image_num, images
    appended to each clip of `frames` frames (image-video joint training); `depth`: the block count if not
    the variant's."""
    from latte_core.latte import LATTE_MODELS
    if steps < 2:
        raise ValueError("--steps must be at least 2 (the first step includes graph compilation)")
    paths = [run_in_fresh_process(_step_path, (model_name, frames, latent, batch, steps, flash_attention, seed,
                                               device, path == "on", images, depth), f"step (kernels {path})")
             for path in kernels]
    result = {"bench": "step", "model": model_name, "depth": depth or LATTE_MODELS[model_name]["depth"],
              "frames": frames, "images": images, "latent": latent,
              "batch": batch, "flash_attention": flash_attention, "device": device, "steps": steps}
    return _combine(result, paths, "median_step_s")


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
    return _median_matmul_seconds(a, b, repeats)


def _forward_path(model_name, frames, latent, batch, repeats, seed, device, kernels_on, queue):
    """Child process: time `repeats` denoising forwards (inference, a new x and t each) after the compiling
    one; put the figures, the last output and the model's GEMMs on queue."""
    active = _setup_child(device, kernels_on)
    import mindspore as ms
    from latte_core import create_latte, kernels

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
    figures = {"kernels": "on" if active else "off", "first_call_s": round(times[0], 3),
               "median_forward_s": round(median, 4), "forward_times_s": [round(s, 4) for s in times[1:]],
               "gflops": round(flops / median / 1e9, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if active:  # numpy's sgemm on the same products, in the same process, right after
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
    return _combine(result, paths, "median_forward_s")


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
