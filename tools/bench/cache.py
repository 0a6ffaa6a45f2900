"""`latte bench cache`: end-to-end cache frames/s against encode-only frames/s of the same VAE on the
same decoded frames; with a text encoder, the same job without and with caption embeddings."""
import csv
import os
import shutil
import statistics
import tempfile
import time

import mindspore as ms
import numpy as np

from latte_core import AutoencoderKL
from latte_toolkit.datasets.cache import read_ledger
from latte_toolkit.datasets.loader import CacheLoader
from latte_toolkit.datasets.storage import Store, is_url, join, stream_cache
from latte_toolkit.datasets.video import center_crop_resize, iter_frames, to_pixels, write_mp4
from latte_toolkit.pipelines.cache import run_cache, worker_vae
from latte_toolkit.pipelines.ingest import run_ingest

from ..demo_text_encoder import byte_level_vocabulary, write_random_text_encoder
from ..synthetic import DIRECTIONS, SKY_COLOURS, cloud_caption, moving_square_frames

# random-weight text encoders `bench cache --text-encoder` builds: (width, layers, heads)
BENCH_TEXT_ENCODERS = {"clip-l": (768, 12, 12),  # CLIP ViT-L/14's text tower (Stable Diffusion 1.x's)
                       "small": (64, 4, 4)}


CLIP_VOCAB_SIZE = 49408


def _bench_text_encoder(choice, scratch):
    """(folder, description) of `choice`: a BENCH_TEXT_ENCODERS name (written with random weights) or a
    text-encoder folder."""
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


def _medians(runs):
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}


def _cache_with_and_without_text(ingest, vae_dir, scratch, encoder_dir, repeats, options):
    """Cache the same manifest without and with caption embeddings, `repeats` times each, the two
    interleaved (their order alternating), after one untimed pair (graph compiles, page cache). Per run:
    the job's frames/s, its frames/s after the setup (validating the VAE and the encoder, the empty
    prompt's embedding; what a longer job amortises), the setup seconds and the text encoder's seconds
    in the shards."""
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

    plain, text = _medians(runs[False]), _medians(runs[True])
    return {"without_text": plain, "with_text": text,
            "with_to_without_job_frames_per_s": round(text["job_frames_per_s"] / plain["job_frames_per_s"], 4),
            "with_to_without_after_setup_frames_per_s": round(
                text["after_setup_frames_per_s"] / plain["after_setup_frames_per_s"], 4),
            "runs": {"without_text": runs[False], "with_text": runs[True]}}


def _out_against_local(ingest, vae_dir, scratch, out, repeats, options, storage_options):
    """The same cache job into a local folder and into `out` (an object-store prefix, or another folder),
    `repeats` times each, interleaved (their order alternating) after one untimed pair: medians of the
    job's frames/s and their ratio. Then a CacheLoader over the last local cache and one over the last
    `out` cache (an object store's through its streaming loader, its local shard cache warm after an
    untimed epoch), an epoch each, interleaved `repeats` times: medians of samples/s and their ratio."""
    runs, last = {"local": [], "out": []}, {}
    for repeat in range(repeats + 1):
        for where in (("out", "local") if repeat % 2 else ("local", "out")):
            target = (os.path.join(scratch, f"local-{repeat}") if where == "local"
                      else join(out, f"bench-cache-{repeat}"))
            summary = run_cache(ingest, vae_dir, target, workers=0, progress=False, storage_options=storage_options,
                                **options)
            last[where] = target
            if repeat:
                runs[where].append({"job_frames_per_s": round(summary["frames"] / summary["seconds"], 3)})
    local, theirs = _medians(runs["local"]), _medians(runs["out"])
    settings = dict(batch_size=4, num_frames=8, clips_per_video=1, seed=0, shuffle_window=4)
    if is_url(last["out"]):
        folder, stream = stream_cache(last["out"], storage_options, 0, None, 2, settings["shuffle_window"])
        loaders = {"local": CacheLoader(last["local"], **settings), "out": CacheLoader(folder, stream=stream,
                                                                                         **settings)}
    else:
        loaders = {where: CacheLoader(last[where], **settings) for where in ("local", "out")}
    rates = {"local": [], "out": []}
    for repeat in range(repeats + 1):
        for where in (("out", "local") if repeat % 2 else ("local", "out")):
            started, samples = time.perf_counter(), 0
            for batch in loaders[where]:
                samples += len(batch["index"])
            if repeat:  # the untimed first epoch: the dataset engine's start, the store's shards fetched
                rates[where].append({"samples_per_s": round(samples / (time.perf_counter() - started), 3)})
    loader_local, loader_out = _medians(rates["local"]), _medians(rates["out"])
    if is_url(out):
        store = Store(out, storage_options, "--out")
        store.remove([key for key in store.listing() if key.startswith("bench-cache-")])
    return {"out": out, "local": local, "to_out": theirs,
            "out_to_local_job_frames_per_s": round(theirs["job_frames_per_s"] / local["job_frames_per_s"], 4),
            "loader_local": loader_local, "loader_out_warm": loader_out,
            "out_warm_to_local_loader_samples_per_s": round(loader_out["samples_per_s"] / loader_local["samples_per_s"],
                                                            4),
            "runs": {"local": runs["local"], "to_out": runs["out"], "loader_local": rates["local"],
                     "loader_out_warm": rates["out"]}}


def bench_cache(fmt="numpy", vae_dir=None, videos=2, frames=16, size=256, micro_batch=8, text_encoder=None,
                repeats=3, out=None, storage_options=None):
    """End-to-end `latte cache` frames/s against encode-only frames/s of the same VAE on the same,
    already decoded and resized frames, in one process. Without `vae_dir`, a randomly initialised VAE
    of sd-vae-ft-mse's architecture is used. With `text_encoder` ("clip-l", "small": random weights,
    see BENCH_TEXT_ENCODERS; or a folder), also the job with and without caption embeddings (a caption
    of its own per video), `repeats` times each, interleaved, medians and their ratios. With `out` (an
    object-store prefix such as s3://bucket/bench, or a folder), also the job into it against the job
    into a local folder, and the loader of each (_out_against_local)."""
    with tempfile.TemporaryDirectory() as scratch:
        if vae_dir is None:
            vae_dir = AutoencoderKL().save_pretrained(os.path.join(scratch, "vae"))
        vae_dir = os.path.abspath(vae_dir)
        captions = _write_captioned_clips(os.path.join(scratch, "src"), videos, frames, size)
        run_ingest([captions], os.path.join(scratch, "ingest"), workers=0, progress=False)
        vae = worker_vae(vae_dir)  # shared with the cache job below: both run on one compiled network
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
        if out is not None:
            load_before = os.getloadavg()
            result["storage"] = _out_against_local(os.path.join(scratch, "ingest"), vae_dir, scratch, out, repeats,
                                                   {"fmt": fmt, "image_size": size, "micro_batch": micro_batch},
                                                   storage_options)
            result["storage"]["load_average_1min"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return result
