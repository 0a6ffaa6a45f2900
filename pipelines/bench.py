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
    from datasets.video import list_frame_files

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

    from datasets.video import center_crop_resize, iter_frames
    from latte_core import AutoencoderKL

    from .cache import _vae, run_cache
    from .synthetic import moving_square_frames, write_mp4

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
        batches = [(np.concatenate(pixels).astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)[i:i + micro_batch]
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
