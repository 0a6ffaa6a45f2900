"""`latte curate`'s near-duplicate check (measures.dct_hash, curate.mark_duplicates): re-encoded and resized
copies of one clip are dropped as duplicates of the first in clip id order; clips of one continuous pan
2 s apart are not. Measured mean distances per frame (of 64 bits): copies 0.7-3.3 from the clip they
copy; pan clips 2 s apart 24-37; unrelated clips 23-37 (the default dedup_distance is 8)."""
import subprocess

import imageio_ffmpeg
import pyarrow.parquet as pq

from latte_toolkit.pipelines.curate import run_curate
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.synthetic import captioned_cloud_frames

from media import write_mp4


def _reencode(source, target, crf, size):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(source), "-c:v", "libx264",
                    "-crf", str(crf), "-vf", f"scale={size}:{size}", "-pix_fmt", "yuv420p", str(target)], check=True)


def test_copies_are_duplicates_of_the_first_and_a_pan_2_s_apart_is_not(tmp_path):
    src = tmp_path / "src"
    # 32 frames of clouds, and two copies: re-encoded smaller at a low quality, and larger
    write_mp4(src / "orig.mp4", captioned_cloud_frames("up", "grey", 32, 128, 1.0, seed=1), fps=8)
    _reencode(src / "orig.mp4", src / "copy_small.mp4", 36, 96)
    _reencode(src / "orig.mp4", src / "copy_big.mp4", 30, 192)
    # one shot panning 2 px/frame: 16-frame clips at 8 fps start 2 s (32 px) apart
    write_mp4(src / "pan.mp4", captioned_cloud_frames("left", "blue", 64, 128, 2.0, seed=0), fps=8)
    run_ingest([src], tmp_path / "ingest", workers=0, progress=False)
    summary = run_curate(tmp_path / "ingest", tmp_path / "curate", min_clip_frames=8, max_clip_frames=16,
                         workers=0, progress=False)
    clips = [row["clip_id"] for row in pq.read_table(tmp_path / "curate" / "clips.parquet").to_pylist()]
    assert clips == ["copy_big.mp4@000000-000016", "copy_big.mp4@000016-000032", "pan.mp4@000000-000016",
                     "pan.mp4@000016-000032", "pan.mp4@000032-000048", "pan.mp4@000048-000064"]
    dropped = {row["clip_id"]: row for row in pq.read_table(tmp_path / "curate" / "filtered.parquet").to_pylist()}
    for copy in ("copy_small.mp4", "orig.mp4"):  # after copy_big.mp4 in clip id order
        for part in ("000000-000016", "000016-000032"):
            row = dropped[f"{copy}@{part}"]
            assert row["reason"] == f"duplicate of copy_big.mp4@{part}" and row["score"] <= 4.0, row
    assert summary["filtered_by_reason"] == {"duplicate": 4}
