"""`latte bench ingest`: videos/s and frames/s of `ingest --verify` against a plain sequential decode of
the same files, the seconds to re-plan a finished run over many inputs, and the cost of ingest's
keyframe check on a long synthetic video."""
import os
import statistics
import tempfile
import time

import av
import numpy as np
import pyarrow.parquet  # noqa: F401
import tqdm.auto  # noqa: F401 (one-time imports, paid once per process, are kept out of the timings)
from PIL import Image

from latte_toolkit.datasets.video import list_frame_files, probe_video
from latte_toolkit.pipelines.ingest import discover, run_ingest


def plain_decode(inputs):
    """Decode every frame of every input sequentially in this process (the baseline)."""
    # kept here, not at the top: a process that loads decord before MindSpore aborts (std::random_device
    # could not be read: `python -c 'import decord; import mindspore'`), and the benchmark may load MindSpore
    # later in this process
    import decord

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
    image = Image.new("RGB", (8, 8), (40, 90, 200))
    for i in range(count):
        folder = os.path.join(root, f"{i // 1000:03d}", f"v{i:05d}")
        os.makedirs(folder)
        image.save(os.path.join(folder, "f_0.png"))


def write_long_h264(path, frames, size):
    """An H.264 (yuv420p, 25 fps, x264's keyframe placement) of `frames` size x size frames written with
    PyAV one frame at a time: a gradient that scrolls and a square that moves."""
    container = av.open(path, "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    ramp = np.arange(size) * (256 // size or 1)
    for i in range(frames):
        image = np.empty((size, size, 3), np.uint8)
        image[..., 0] = (ramp[None, :] + i) % 256
        image[..., 1] = ramp[:, None] % 256
        image[..., 2] = 40
        corner = (2 * i) % (size - size // 8)
        image[corner:corner + size // 8, corner:corner + size // 8] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with av.open(path) as written:
        return sum(packet.is_keyframe for packet in written.demux(written.streams.video[0]) if packet.size)


def bench_keyframe_check(scratch, frames, size, repeats):
    """Seconds of ingest's probe (no --verify) of a `frames`-frame video with and without its keyframe
    check, alternated, medians of `repeats`, their ratio; and the --verify probe's seconds once."""
    path = os.path.join(scratch, "long.mp4")
    keyframes = write_long_h264(path, frames, size)
    probe_video(path)  # untimed: the page cache and the decoders' first use
    timings = {False: [], True: []}
    for _ in range(repeats):
        for check in (False, True):
            start = time.perf_counter()
            probe_video(path, check_keyframes=check)
            timings[check].append(time.perf_counter() - start)
    start = time.perf_counter()
    probe_video(path, verify=True)
    verify_s = time.perf_counter() - start
    without, with_check = statistics.median(timings[False]), statistics.median(timings[True])
    return {"frames": frames, "size": size, "keyframes": keyframes, "bytes": os.path.getsize(path),
            "repeats": repeats, "without_check_s": round(without, 4), "with_check_s": round(with_check, 4),
            "ratio": round(with_check / without, 3), "verify_s": round(verify_s, 4)}


def bench_ingest(sources, workers=0, replan_inputs=10000, keyframe_frames=0, keyframe_size=64, repeats=3):
    """Videos/s and frames/s of `ingest --verify` and of a plain decode, plus re-plan seconds, and with
    keyframe_frames the keyframe check's cost (bench_keyframe_check)."""
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
        if keyframe_frames:
            result["keyframe_check"] = bench_keyframe_check(scratch, keyframe_frames, keyframe_size, repeats)
    return result
