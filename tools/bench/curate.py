"""`latte bench curate`: videos/s and frames/s of the whole `latte curate` stage against decoding the same
frames alone (the project's decoder path, datasets.video.iter_frames), in one run, on 640x360 H.264
videos it writes (textures drifting 2 px/frame with one hard cut each) or on given inputs."""
import os
import statistics
import tempfile
import time

import numpy as np

from latte_toolkit.datasets.cache import read_ledger
from latte_toolkit.datasets.video import iter_frames, read_manifest, write_mp4
from latte_toolkit.pipelines.curate import run_curate
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.synthetic import texture_drift_frames

TARGET = 1.5  # the stage's seconds at most 1.5 x decoding's (it reads each frame once)


def write_bench_videos(folder, videos, frames, height, width, fps=24):
    """`videos` H.264 files of two drifting textures each, a hard cut halfway."""
    for i in range(videos):
        half = frames // 2
        clip = np.concatenate([texture_drift_frames(half, 2.0, height, width, seed=2 * i),
                               texture_drift_frames(frames - half, 2.0, height, width, seed=2 * i + 1)])
        write_mp4(os.path.join(folder, f"bench_{i:03d}.mp4"), clip, fps=fps)
    return folder


def _decode_seconds(rows):
    started, frames = time.perf_counter(), 0
    for row in rows:
        frames += sum(1 for _ in iter_frames(row["path"], row["kind"]))
    return time.perf_counter() - started, frames


def bench_curate(sources=None, videos=4, frames=120, height=360, width=640, workers=0, repeats=3):
    """Median seconds of decoding every frame alone and of the whole curate job (a new folder each
    time), interleaved `repeats` times; their ratio against TARGET, and the job's own phase seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        if not sources:
            sources = [write_bench_videos(os.path.join(scratch, "videos"), videos, frames, height, width)]
        run_ingest(sources, os.path.join(scratch, "ingest"), workers=0, progress=False)
        rows = read_manifest(os.path.join(scratch, "ingest"))
        decode, stage, phases = [], [], []
        for repeat in range(repeats):
            seconds, decoded = _decode_seconds(rows)
            decode.append(seconds)
            out = os.path.join(scratch, f"curate_{repeat}")
            started = time.perf_counter()
            summary = run_curate(os.path.join(scratch, "ingest"), out, workers=workers, progress=False)
            stage.append(time.perf_counter() - started)
            phases.append({phase: sum(r["seconds"][phase] for r in read_ledger(out))
                           for phase in ("decode", "analyse", "write")})
    decode_s, stage_s = statistics.median(decode), statistics.median(stage)
    return {
        "bench": "curate", "videos": len(rows), "frames": decoded, "workers": workers, "repeats": repeats,
        "size": f"{rows[0]['width']}x{rows[0]['height']}" if rows else None,
        "decode": {"seconds": round(decode_s, 3), "videos_per_s": round(len(rows) / decode_s, 2),
                   "frames_per_s": round(decoded / decode_s, 1)},
        "curate": {"seconds": round(stage_s, 3), "videos_per_s": round(len(rows) / stage_s, 2),
                   "frames_per_s": round(summary["frames"] / stage_s, 1), "clips": summary["clips"],
                   "cuts": summary["cuts"],
                   "phase_seconds": {k: round(statistics.median(p[k] for p in phases), 3) for k in phases[0]}},
        "curate_to_decode_seconds": round(stage_s / decode_s, 3), "target": TARGET,
        "met": stage_s / decode_s <= TARGET,
    }
