"""`latte curate` (pipelines/curate.py): clips as frame ranges of the ingested files, kept in
clips.parquet or dropped with their reason in filtered.parquet; ledgered units, resume after kill -9,
failure rows, the same tables from every runner, bad input refused with one `Error:` line, a full disk
(one `Error:` line, the committed units kept, a re-run completes the job), and `latte report CURATE_DIR`.
Real H.264 files and frame folders made by the tests, a real dask LocalCluster."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from latte_toolkit.cli import main
from latte_toolkit.pipelines.curate import CurateError, run_curate
from latte_toolkit.pipelines.ingest import run_ingest

from media import kill_after_ledger_lines, moving_square_frames, truncate, unmount, write_frame_folder, write_mp4

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")


def _rows(path):
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An ingest folder: a 40-frame video, a 10-frame one, a one-frame one, and a 30-frame frame folder
    whose frame 20 is damaged (ingest without --verify reads only its first frame)."""
    root = tmp_path_factory.mktemp("curate")
    src = root / "src"
    write_mp4(src / "long.mp4", moving_square_frames(40, seed=0))
    write_mp4(src / "short.mp4", moving_square_frames(10, seed=1))
    write_mp4(src / "still.mp4", moving_square_frames(1, seed=2))
    write_frame_folder(src / "damaged", moving_square_frames(30, seed=3))
    (src / "damaged" / "f_20.jpg").write_bytes(b"not a jpeg")
    summary = run_ingest([src], root / "ingest", workers=0, progress=False)
    assert summary["ok"] == 4, summary
    return root / "ingest"


def test_clips_are_frame_ranges_split_and_filtered_with_their_reasons(ingested, tmp_path):
    summary = run_curate(ingested, tmp_path / "out", min_clip_frames=12, max_clip_frames=24, workers=0,
                         progress=False)
    clips = _rows(tmp_path / "out" / "clips.parquet")
    assert [(c["clip_id"], c["num_frames"]) for c in clips] == [
        ("damaged@000000-000020", 20), ("long.mp4@000000-000024", 24), ("long.mp4@000024-000040", 16)]
    manifest = {row["video_id"]: row for row in _rows(ingested / "manifest.parquet")}
    for clip in clips:  # the video's fields, inherited
        video = manifest[clip["video_id"]]
        assert clip["end_frame"] - clip["start_frame"] == clip["num_frames"]
        assert {k: clip[k] for k in ("path", "kind", "fps", "height", "width", "label", "caption")} == {
            k: video[k] for k in ("path", "kind", "fps", "height", "width", "label", "caption")}
    filtered = _rows(tmp_path / "out" / "filtered.parquet")
    assert [(f["clip_id"], f["reason"], f["score"]) for f in filtered] == [
        ("short.mp4@000000-000010", "too short", 10.0), ("still.mp4@000000-000001", "too short", 1.0)]
    failures = _rows(tmp_path / "out" / "failures.parquet")
    assert [(f["video_id"], f["category"]) for f in failures] == [("damaged", "corrupt frame")]
    assert "f_20.jpg" in failures[0]["message"] and "before frame 20 are kept" in failures[0]["message"]
    assert summary["clips"] == 3 and summary["filtered_by_reason"] == {"too short": 2} and summary["failed"] == 1
    assert summary["frames"] == 40 + 10 + 1 + 20


def test_a_video_truncated_after_ingest_keeps_its_clips_before_the_damage(tmp_path):
    """decord refuses to open a truncated file (it reads every packet first); PyAV decodes it up to the
    damage: 6 of its 60 frames here (measured), one clip, and a failure row."""
    write_mp4(tmp_path / "src" / "cut.mp4", moving_square_frames(60), faststart=True)
    run_ingest([tmp_path / "src"], tmp_path / "ingest", workers=0, progress=False)
    truncate(tmp_path / "src" / "cut.mp4", 0.6)
    summary = run_curate(tmp_path / "ingest", tmp_path / "out", min_clip_frames=4, min_motion=0.0, workers=0,
                         progress=False)
    clips = _rows(tmp_path / "out" / "clips.parquet")
    failures = _rows(tmp_path / "out" / "failures.parquet")
    assert [(c["start_frame"], c["end_frame"]) for c in clips] == [(0, 6)] and summary["frames"] == 6
    assert [f["category"] for f in failures] == ["truncated"]
    assert "its clips before frame 6 are kept" in failures[0]["message"]


def test_rerun_resumes_and_other_keys_are_refused(ingested, tmp_path):
    out = tmp_path / "out"
    first = run_curate(ingested, out, min_clip_frames=4, workers=0, unit_size=1, progress=False)
    tables = {name: (out / name).read_bytes() for name in ("clips.parquet", "filtered.parquet", "failures.parquet")}
    again = run_curate(ingested, out, min_clip_frames=4, workers=0, unit_size=1, progress=False)
    assert first["units_run"] == 4 and again["units_run"] == 0 and again["units_skipped"] == 4
    assert {name: (out / name).read_bytes() for name in tables} == tables
    with pytest.raises(CurateError, match="min_clip_frames differ"):
        run_curate(ingested, out, min_clip_frames=8, workers=0, unit_size=1, progress=False)
    assert {name: (out / name).read_bytes() for name in tables} == tables


def test_dask_workers_give_the_same_tables(ingested, tmp_path):
    run_curate(ingested, tmp_path / "here", min_clip_frames=4, max_clip_frames=16, workers=0, unit_size=2,
               progress=False)
    run_curate(ingested, tmp_path / "dask", min_clip_frames=4, max_clip_frames=16, workers=2, unit_size=2,
               progress=False)
    for name in ("clips.parquet", "filtered.parquet", "failures.parquet"):
        assert pq.read_table(tmp_path / "here" / name).equals(pq.read_table(tmp_path / "dask" / name)), name


def _curate_command(manifest, out, *extra):
    return [LATTE, "curate", "--manifest", str(manifest), "--out", str(out), "--workers", "0", "--unit-size", "1",
            "--min-clip-frames", "8", *extra]


def test_killed_run_resumes_to_the_uninterrupted_tables(tmp_path):
    src = tmp_path / "src"
    for i in range(10):
        write_mp4(src / f"clip_{i:02d}.mp4", moving_square_frames(120, height=96, width=128, seed=i))
    run_ingest([src], tmp_path / "ingest", workers=0, progress=False)
    run_curate(tmp_path / "ingest", tmp_path / "reference", min_clip_frames=8, workers=0, unit_size=1,
               progress=False)
    out = tmp_path / "out"
    proc = subprocess.Popen(_curate_command(tmp_path / "ingest", out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ledger = out / "ledger.jsonl"
    assert kill_after_ledger_lines(proc, ledger, 2), ("the run finished before it could be killed; the test needs "
                                                      "slower inputs")
    committed = len(ledger.read_text().splitlines())
    assert 2 <= committed < 10 and not (out / "clips.parquet").exists()
    resumed = subprocess.run(_curate_command(tmp_path / "ingest", out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{10 - committed} units run, {committed} already done" in resumed.stdout
    units = [json.loads(line)["unit_id"] for line in ledger.read_text().splitlines()]
    assert len(units) == len(set(units)) == 10
    for name in ("clips.parquet", "filtered.parquet", "failures.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(tmp_path / "reference" / name)), name
    assert not [name for name in os.listdir(out / "units") if name.startswith(".staging-")]


def _one_error_line(proc, *names):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for name in names:
        assert str(name) in errors[0], errors[0]


def _other_version(tmp_path, ingested):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "manifest.parquet").write_bytes((ingested / "manifest.parquet").read_bytes())
    (folder / "ingest.json").write_text(json.dumps({**json.loads((ingested / "ingest.json").read_text()),
                                                    "version": 0}))
    return ["--manifest", str(folder)], folder / "ingest.json"


def _min_above_max(tmp_path, ingested):
    return ["--manifest", str(ingested), "--min-clip-frames", "20", "--max-clip-frames", "10"], "max_clip_frames"


def _no_manifest(tmp_path, ingested):
    return ["--manifest", str(tmp_path)], tmp_path


def _negative_min(tmp_path, ingested):
    return ["--manifest", str(ingested), "--min-clip-frames", "-1"], "--min-clip-frames"


def _negative_threshold(tmp_path, ingested):
    return ["--manifest", str(ingested), "--cut-threshold", "-5"], "--cut-threshold"


def _min_motion_above_max(tmp_path, ingested):
    return ["--manifest", str(ingested), "--min-motion", "2", "--max-motion", "1"], "max_motion"


@pytest.mark.parametrize("case", [_other_version, _min_above_max, _no_manifest, _negative_min, _negative_threshold,
                                  _min_motion_above_max])
def test_bad_input_is_one_error_line_and_nothing_is_written(ingested, tmp_path, case):
    argv, named = case(tmp_path, ingested)
    out = tmp_path / "out"
    proc = subprocess.run([LATTE, "curate", "--out", str(out), "--workers", "0", *argv], capture_output=True,
                          text=True)
    _one_error_line(proc, named)
    assert not out.exists()


def test_a_folder_curated_with_other_keys_is_refused_by_the_command(ingested, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(_curate_command(ingested, out), capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr  # the damaged frame folder is a failure row
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    refused = subprocess.run(_curate_command(ingested, out, "--max-clip-frames", "9"), capture_output=True,
                             text=True)
    _one_error_line(refused, out, "max_clip_frames")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_report_shows_the_funnel_draws_the_histograms_and_verifies_the_units(ingested, tmp_path):
    out, png = tmp_path / "out", tmp_path / "curate.png"
    run_curate(ingested, out, min_clip_frames=12, max_clip_frames=24, workers=0, unit_size=1, progress=False)
    result = CliRunner().invoke(main, ["report", str(out), "--json", "--verify", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert {k: report[k] for k in ("finished", "videos", "failed_videos", "frames", "cuts", "clips", "kept",
                                   "kept_frames", "dropped_by_reason", "verified_units")} == {
        "finished": True, "videos": 4, "failed_videos": 1, "frames": 71, "cuts": 0, "clips": 5, "kept": 3,
        "kept_frames": 60, "dropped_by_reason": {"too short": 2}, "verified_units": 4}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = CliRunner().invoke(main, ["report", str(out)])
    assert "4 videos (1 failed), 71 frames, 0 cuts -> 5 clips -> 3 kept (60 frames)" in text.output
    assert "dropped, too short: 2" in text.output
    unit = sorted((out / "units").iterdir())[0]
    unit.write_bytes(unit.read_bytes()[:-1] + b"\0")
    damaged = CliRunner().invoke(main, ["report", str(out), "--verify"])
    assert damaged.exit_code == 1 and f"CORRUPT {unit.stem}" in damaged.output


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_disk_stops_the_job_and_a_rerun_completes_it(ingested, tmp_path):
    reference = tmp_path / "reference"
    run_curate(ingested, reference, min_clip_frames=8, workers=0, unit_size=1, progress=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "out"
        proc = subprocess.run(_curate_command(ingested, out), capture_output=True, text=True)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "no space left" in errors[0] and str(disk) in errors[0], proc.stderr
        committed = len((out / "ledger.jsonl").read_text().splitlines()) if (out / "ledger.jsonl").exists() else 0
        assert committed < 4 and not (out / "clips.parquet").exists()  # 16 kB: 1 of the 4 units fits (measured)
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        again = run_curate(ingested, out, min_clip_frames=8, workers=0, unit_size=1, progress=False)
        assert (again["units_run"], again["units_skipped"]) == (4 - committed, committed)
        for name in ("clips.parquet", "filtered.parquet", "failures.parquet"):
            assert pq.read_table(out / name).equals(pq.read_table(reference / name)), name
    finally:
        unmount(disk)
