import csv
import json
import os
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from latte_toolkit.datasets.video import list_frame_files
from latte_toolkit.cli import main
from latte_toolkit.pipelines.ingest import run_ingest

from media import kill_after_ledger_lines, moving_square_frames, truncate, write_frame_folder, write_mp4

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")


def _rows(table_path):
    return {row["video_id"]: row for row in pq.read_table(table_path).to_pylist()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Every kind of input the issue names, good and broken, made with real encoders."""
    root = tmp_path_factory.mktemp("sources")
    src = root / "src"
    write_mp4(src / "videos" / "a.mp4", moving_square_frames(20))
    write_mp4(src / "videos" / "nested" / "b.mp4", moving_square_frames(30, seed=1), fps=10)
    write_mp4(src / "videos" / "short.mp4", moving_square_frames(5, seed=2))
    (src / "videos" / "zero.mp4").write_bytes(b"")
    (src / "videos" / "text.mp4").write_text("this is not a video\n")
    write_mp4(src / "videos" / "cut.mp4", moving_square_frames(60, seed=3), faststart=True)
    truncate(src / "videos" / "cut.mp4", 0.6)
    write_frame_folder(src / "sky" / "day" / "v1", moving_square_frames(12, seed=4))
    write_frame_folder(src / "sky" / "day" / "v2", moving_square_frames(11, seed=5), ext="png")
    write_frame_folder(src / "sky" / "bad", moving_square_frames(12, seed=6))
    (src / "sky" / "bad" / "f_7.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "sky" / "empty").mkdir(parents=True)
    listed = root / "listed"
    write_mp4(listed / "clips" / "c1.mp4", moving_square_frames(16, seed=7))
    write_frame_folder(listed / "frames" / "c2", moving_square_frames(9, seed=8))
    with open(listed / "list.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "caption", "class"])
        writer.writerow(["clips/c1.mp4", "a square drifting", "3"])
        writer.writerow(["frames/c2", "frames of a square", "1"])
        writer.writerow(["clips/missing.mp4", "not there", "0"])
    return {"src": src, "list": listed / "list.csv"}


def test_frames_are_ordered_by_number_not_lexically(tmp_path):
    frames = moving_square_frames(12)
    write_frame_folder(tmp_path, frames, names=[f"f_{i}.jpg" for i in range(12)])
    names = [os.path.basename(path) for path in list_frame_files(tmp_path)]
    assert names[:3] == ["f_0.jpg", "f_1.jpg", "f_2.jpg"] and names[-2:] == ["f_10.jpg", "f_11.jpg"]


def test_ingest_records_usable_and_failed_inputs(dataset, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["ingest", "--source", str(dataset["src"]), "--source", str(dataset["list"]),
                                       "--out", str(out), "--num-frames", "4", "--sample-stride", "2", "--verify",
                                       "--workers", "0", "--unit-size", "3"])
    assert result.exit_code == 1, result.output  # some inputs failed
    assert "failed, truncated: 1" in result.output
    manifest = _rows(out / "manifest.parquet")
    assert sorted(manifest) == ["clips/c1.mp4", "frames/c2", "sky/day/v1", "sky/day/v2", "videos/a.mp4",
                                "videos/nested/b.mp4"]
    b = manifest["videos/nested/b.mp4"]
    assert (b["kind"], b["num_frames"], b["fps"], b["height"], b["width"]) == ("video", 30, 10.0, 48, 64)
    assert manifest["sky/day/v2"]["kind"] == "frames" and manifest["sky/day/v2"]["num_frames"] == 11
    assert manifest["clips/c1.mp4"]["caption"] == "a square drifting" and manifest["clips/c1.mp4"]["label"] == 3
    assert manifest["frames/c2"]["label"] == 1 and manifest["frames/c2"]["num_frames"] == 9
    failures = {video_id: row["category"] for video_id, row in _rows(out / "failures.parquet").items()}
    assert failures == {
        "videos/zero.mp4": "unreadable", "videos/text.mp4": "unreadable", "videos/cut.mp4": "truncated",
        "sky/bad": "corrupt frame", "sky/empty": "empty", "videos/short.mp4": "too short",
        "clips/missing.mp4": "missing",
    }
    messages = _rows(out / "failures.parquet")
    assert "5 frames, a clip of 4 frames with stride 2 needs 8" in messages["videos/short.mp4"]["message"]
    assert str(dataset["src"] / "sky" / "bad" / "f_7.jpg") in messages["sky/bad"]["message"]
    # a second run finds everything in the ledger and changes nothing
    before = pq.read_table(out / "manifest.parquet")
    again = CliRunner().invoke(main, ["ingest", "--source", str(dataset["src"]), "--source", str(dataset["list"]),
                                      "--out", str(out), "--num-frames", "4", "--sample-stride", "2", "--verify",
                                      "--workers", "0", "--unit-size", "3"])
    assert again.exit_code == 1 and "0 units run, 5 already done" in again.output  # 13 inputs, 3 per unit
    assert pq.read_table(out / "manifest.parquet").equals(before)


def test_metadata_mode_does_not_decode_every_frame(dataset, tmp_path):
    """The corrupt JPEG is past the first frame: only --verify finds it."""
    quick = run_ingest([dataset["src"] / "sky"], tmp_path / "quick", workers=0, progress=False)
    verified = run_ingest([dataset["src"] / "sky"], tmp_path / "verified", verify=True, workers=0, progress=False)
    assert "bad" not in _rows(tmp_path / "verified" / "manifest.parquet")
    assert _rows(tmp_path / "quick" / "manifest.parquet")["bad"]["num_frames"] == 12
    assert quick["failed_by_category"] == {"empty": 1}
    assert verified["failed_by_category"] == {"empty": 1, "corrupt frame": 1}


def _ingest_command(sources, out, *extra):
    args = [LATTE, "ingest", "--out", str(out), "--verify", "--workers", "0", "--unit-size", "1", *extra]
    for source in sources:
        args += ["--source", str(source)]
    return args


def test_killed_run_resumes_without_losing_or_duplicating_rows(tmp_path):
    src = tmp_path / "many"
    for i in range(14):
        write_mp4(src / f"clip_{i:02d}.mp4", moving_square_frames(150, height=96, width=128, seed=i))
    reference = run_ingest([src], tmp_path / "reference", verify=True, workers=0, unit_size=1, progress=False)
    out = tmp_path / "out"
    proc = subprocess.Popen(_ingest_command([src], out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = out / "ledger.jsonl"
    assert kill_after_ledger_lines(proc, ledger, 3), ("the run finished before it could be killed; the test needs "
                                                      "slower inputs")
    committed = len(ledger.read_text().splitlines())
    assert 3 <= committed < 14
    assert not (out / "manifest.parquet").exists()  # nothing is published before the end
    resumed = subprocess.run(_ingest_command([src], out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{14 - committed} units run, {committed} already done" in resumed.stdout
    units = [json.loads(line)["unit_id"] for line in ledger.read_text().splitlines()]
    assert len(units) == len(set(units)) == 14
    assert pq.read_table(out / "manifest.parquet").drop(["path"]).equals(
        pq.read_table(tmp_path / "reference" / "manifest.parquet").drop(["path"]))
    assert reference["ok"] == 14
    assert not [name for name in os.listdir(out / "units") if name.startswith(".staging-")]


def test_a_local_dask_run_prints_its_own_lines_not_the_schedulers(tmp_path):
    """The default runner (one local dask worker) starts and stops a scheduler in the command's process, which
    logs ~25 INFO lines of its own (addresses, a dashboard URL, worker retirement): shown with -v only."""
    write_mp4(tmp_path / "src" / "a.mp4", moving_square_frames(10))
    # as a user's shell has it: not the setting an in-process `latte` command of another test left here
    env = {name: value for name, value in os.environ.items() if name != "DASK_LOGGING__DISTRIBUTED"}
    quiet = subprocess.run([LATTE, "ingest", "--source", tmp_path / "src", "--out", tmp_path / "quiet"],
                           capture_output=True, text=True, timeout=300, env=env)
    verbose = subprocess.run([LATTE, "-v", "ingest", "--source", tmp_path / "src", "--out", tmp_path / "verbose"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "1 usable, 0 failed of 1 inputs" in quiet.stdout
    assert " distributed." not in quiet.stderr, quiet.stderr
    assert " distributed.scheduler" in verbose.stderr  # the run did use dask, so there was something to quiet


def test_retry_failed_retries_only_the_failures(tmp_path):
    src = tmp_path / "src"
    write_mp4(src / "good.mp4", moving_square_frames(10))
    (src / "later.mp4").write_text("not yet a video")
    out = tmp_path / "out"
    first = run_ingest([src], out, workers=0, progress=False)
    assert first["failed_by_category"] == {"unreadable": 1}
    write_mp4(src / "later.mp4", moving_square_frames(12, seed=1))  # the input is repaired
    plain = run_ingest([src], out, workers=0, progress=False)
    assert plain["units_run"] == 0 and plain["failed"] == 1  # without the flag nothing is re-tried
    retried = run_ingest([src], out, workers=0, retry_failed=True, progress=False)
    assert retried["units_run"] == 1 and retried["failed"] == 0 and retried["ok"] == 2
    assert _rows(out / "manifest.parquet")["later.mp4"]["num_frames"] == 12
    assert pq.read_table(out / "failures.parquet").num_rows == 0


def test_a_hung_decode_is_killed_and_the_job_goes_on(tmp_path):
    src = tmp_path / "src"
    write_frame_folder(src / "a_hangs", moving_square_frames(3))
    os.remove(src / "a_hangs" / "f_0.jpg")
    os.mkfifo(src / "a_hangs" / "f_0.jpg")  # opening a FIFO with no writer blocks forever
    write_mp4(src / "b_fine.mp4", moving_square_frames(10))
    started = time.monotonic()
    summary = run_ingest([src], tmp_path / "out", verify=True, workers=0, timeout=2.0, progress=False)
    assert time.monotonic() - started < 30
    assert summary["failed_by_category"] == {"timeout": 1} and summary["ok"] == 1
    message = _rows(tmp_path / "out" / "failures.parquet")["a_hangs"]["message"]
    assert "longer than 2 s and was killed" in message


def test_manifest_is_the_same_for_0_1_and_2_local_dask_workers(dataset, tmp_path):
    tables = []
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        run_ingest([dataset["src"]], out, verify=True, workers=workers, unit_size=2, progress=False)
        tables.append(pq.read_table(out / "manifest.parquet"))
        assert pq.read_table(out / "failures.parquet").num_rows == 5  # no --num-frames: short.mp4 is usable
    assert tables[0].num_rows == 5
    assert tables[0].equals(tables[1]) and tables[1].equals(tables[2])


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ingest_on_a_real_dask_scheduler_with_two_workers(dataset, tmp_path):
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = open(tmp_path / "dask.log", "w")
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-dashboard"], stdout=logs, stderr=logs)]
    try:
        for _ in range(2):
            processes.append(subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                               "--no-dashboard"], stdout=logs, stderr=logs))
        from dask.distributed import Client
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        summary = run_ingest([dataset["src"]], tmp_path / "cluster", verify=True, scheduler=address, unit_size=2,
                             progress=False)
        local = run_ingest([dataset["src"]], tmp_path / "local", verify=True, workers=0, unit_size=2, progress=False)
        assert summary["ok"] == local["ok"] == 5 and summary["failed_by_category"] == local["failed_by_category"]
        assert pq.read_table(tmp_path / "cluster" / "manifest.parquet").equals(
            pq.read_table(tmp_path / "local" / "manifest.parquet"))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        logs.close()


def test_config_file_and_bad_usage(dataset, tmp_path):
    config = tmp_path / "ingest.yaml"
    config.write_text(f"data_config:\n  data_folder: {dataset['src'] / 'sky' / 'day'}\n  sample_n_frames: 4\n"
                      f"  sample_stride: 3\nworkers: 0\n")
    result = CliRunner().invoke(main, ["ingest", "-c", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "failed, too short: 1" in result.output  # v2 has 11 < 4 x 3 frames
    assert sorted(_rows(tmp_path / "out" / "manifest.parquet")) == ["v1"]
    config.write_text("data_folder: x\nnum_frame: 4\n")
    result = CliRunner().invoke(main, ["ingest", "-c", str(config), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "unknown key 'num_frame'" in result.output
    config.write_text("data_folder: x\nnum_frames: four\n")
    result = CliRunner().invoke(main, ["ingest", "-c", str(config), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "num_frames must be int" in result.output
    result = CliRunner().invoke(main, ["ingest", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o3")])
    assert result.exit_code == 2 and "nowhere: not a folder" in result.output
    # an output folder written with other settings is not mixed with this run
    result = CliRunner().invoke(main, ["ingest", "--source", str(dataset["src"] / "sky" / "day"), "--out",
                                       str(tmp_path / "out"), "--workers", "0"])
    assert result.exit_code == 2 and "other settings (num_frames, sample_stride differ)" in result.output


def test_gif_and_json_list_inputs(tmp_path):
    from PIL import Image
    frames = [Image.fromarray(frame) for frame in moving_square_frames(10)]
    (tmp_path / "src").mkdir()
    frames[0].save(tmp_path / "src" / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    write_mp4(tmp_path / "src" / "clip.mp4", moving_square_frames(14, seed=1))
    (tmp_path / "src" / "list.json").write_text(json.dumps([
        {"video": "anim.gif", "caption": "a gif", "class": 2}, {"video": "clip.mp4"}]))
    summary = run_ingest([tmp_path / "src" / "list.json"], tmp_path / "out", verify=True, workers=0, progress=False)
    assert summary["failed"] == 0
    rows = _rows(tmp_path / "out" / "manifest.parquet")
    gif = rows["anim.gif"]
    assert (gif["num_frames"], gif["fps"], gif["height"], gif["width"], gif["label"], gif["caption"]) == (
        10, 10.0, 48, 64, 2, "a gif")
    assert rows["clip.mp4"]["num_frames"] == 14 and rows["clip.mp4"]["label"] is None
