"""Faults of the ingest job's inputs and surroundings: repeated inputs, file names that are not UTF-8,
bad --workers, sources that yield nothing, symbolic-link loops, a read-only or full output disk, and a
damaged ledger. Each is checked on real files, and through the real `latte` command where it is one."""
import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from latte_toolkit.datasets.cache import read_ledger
from latte_core.errors import DiskFull, UserError
from latte_toolkit.pipelines.ingest import IngestError, latest_rows, run_ingest
from latte_toolkit.pipelines.ledger import Ledger
from latte_toolkit.pipelines.runners import run_units

from media import moving_square_frames, one_error_line, unmount, write_frame_folder, write_mp4

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three small H.264 clips of 8, 9 and 10 frames, copied into each test's sources."""
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i in range(3):
        paths.append(folder / f"c{i}.mp4")
        write_mp4(paths[-1], moving_square_frames(8 + i, seed=i))
    return paths


def _copy(clip, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(clip, path)
    return path


def _rows(path):
    return pq.read_table(path).to_pylist()


def _ids(path):
    return sorted(row["video_id"] for row in _rows(path))


def _ingest(out, *sources, extra=(), timeout=120):
    args = [LATTE, "ingest", "--out", str(out), "--workers", "0", *extra]
    for source in sources:
        args += ["--source", os.fspath(source)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def _no_error(proc, code):
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------- 1. repeated inputs
def _same_folder_twice(root, clips):
    for i, clip in enumerate(clips):
        _copy(clip, root / "src" / f"v{i}.mp4")
    return [root / "src", root / "src"]


def _list_naming_a_file_twice(root, clips):
    for i, clip in enumerate(clips):
        _copy(clip, root / "src" / f"v{i}.mp4")
    (root / "src" / "list.csv").write_text("video,caption\nv0.mp4,first\nv1.mp4,\n./v0.mp4,again\n")
    return [root / "src" / "list.csv"]


def _folder_and_a_file_in_it(root, clips):
    for i, clip in enumerate(clips):
        _copy(clip, root / "src" / f"v{i}.mp4")
    return [root / "src", root / "src" / "v1.mp4"]


def _link_to_a_file_of_the_folder(root, clips):
    for i, clip in enumerate(clips):
        _copy(clip, root / "src" / f"v{i}.mp4")
    os.symlink(root / "src" / "v2.mp4", root / "src" / "z_alias.mp4")
    return [root / "src"]


@pytest.mark.parametrize("make", [_same_folder_twice, _list_naming_a_file_twice, _folder_and_a_file_in_it,
                                  _link_to_a_file_of_the_folder])
def test_inputs_that_resolve_to_one_file_are_one_input(tmp_path, clips, make):
    sources = make(tmp_path, clips)
    summary = run_ingest(sources, tmp_path / "out", workers=0, unit_size=2, progress=False)
    expected = ["v0.mp4", "v1.mp4"] if make is _list_naming_a_file_twice else ["v0.mp4", "v1.mp4", "v2.mp4"]
    assert summary["failed"] == 0 and summary["ok"] == len(expected)
    assert _ids(tmp_path / "out" / "manifest.parquet") == expected
    if make is _list_naming_a_file_twice:  # the first entry (in the list's order) is the one kept
        assert {r["video_id"]: r["caption"] for r in _rows(tmp_path / "out" / "manifest.parquet")}["v0.mp4"] == "first"


def test_a_repeated_source_through_the_command_exits_0(tmp_path, clips):
    sources = _same_folder_twice(tmp_path, clips)
    proc = _ingest(tmp_path / "out", *sources)
    _no_error(proc, 0)
    assert "3 usable, 0 failed of 3 inputs" in proc.stdout


def test_one_id_from_different_files_keeps_the_first_whatever_the_unit_order(tmp_path, clips):
    for name in ("a", "b"):  # both sources hold v.mp4; a's sorts first and has 8 frames, b's 10
        _copy(clips[0 if name == "a" else 2], tmp_path / name / "v.mp4")
        _copy(clips[1], tmp_path / name / f"only_{name}.mp4")
    sources, out = [tmp_path / "b", tmp_path / "a"], tmp_path / "out"
    first = run_ingest(sources, out, workers=0, unit_size=1, progress=False)
    assert first["ok"] == 3 and first["failed_by_category"] == {"duplicate": 1}

    def check():
        manifest = {row["video_id"]: row for row in _rows(out / "manifest.parquet")}
        assert sorted(manifest) == ["only_a.mp4", "only_b.mp4", "v.mp4"]
        assert manifest["v.mp4"]["path"] == str(tmp_path / "a" / "v.mp4") and manifest["v.mp4"]["num_frames"] == 8
        failures = _rows(out / "failures.parquet")
        assert [(r["video_id"], r["path"], r["category"]) for r in failures] == [
            ("v.mp4", str(tmp_path / "b" / "v.mp4"), "duplicate")]
        assert str(tmp_path / "a" / "v.mp4") in failures[0]["message"]
    check()
    records = Ledger(out).records()
    for order in (records, records[::-1]):  # units commit in any order on dask workers
        rows = latest_rows(str(out), order)
        assert [r["path"] for r in rows if r["video_id"] == "v.mp4" and r["category"] is None] == [
            str(tmp_path / "a" / "v.mp4")]
    # resume after a kill that lost the last two ledger lines, then a retry of the failures
    lines = (out / "ledger.jsonl").read_text().splitlines(keepends=True)
    (out / "ledger.jsonl").write_text("".join(lines[:-2]))
    resumed = run_ingest(sources, out, workers=0, unit_size=1, progress=False)
    assert resumed["units_run"] == 2 and resumed["ok"] == 3
    check()
    retried = run_ingest(sources, out, workers=0, unit_size=1, retry_failed=True, progress=False)
    assert retried["ok"] == 3 and retried["failed_by_category"] == {"duplicate": 1}
    check()


# ------------------------------------------------------------------------------- 2. names not UTF-8
def _bad_video_name(src, clips):
    _copy(clips[2], os.path.join(os.fsencode(src), b"bad\xff.mp4"))
    return "bad\\xff.mp4", "video"


def _bad_frame_folder_name(src, clips):
    write_frame_folder(os.path.join(os.fsencode(src), b"fr\xe9mes").decode("utf-8", "surrogateescape"),
                       moving_square_frames(4))
    return "fr\\xe9mes", "frames"


@pytest.mark.parametrize("make", [_bad_video_name, _bad_frame_folder_name])
def test_a_name_that_is_not_utf8_fails_alone(tmp_path, clips, make):
    src = tmp_path / "src"
    _copy(clips[0], src / "a.mp4")
    _copy(clips[1], src / "z.mp4")
    bad_id, kind = make(src, clips)
    out = tmp_path / "out"
    proc = _ingest(out, src)  # the three inputs are one unit
    _no_error(proc, 1)
    assert "2 usable, 1 failed of 3 inputs" in proc.stdout and "failed, bad name: 1" in proc.stdout
    assert _ids(out / "manifest.parquet") == ["a.mp4", "z.mp4"]
    failures = pq.read_table(out / "failures.parquet")
    failures.validate(full=True)  # every string is valid UTF-8
    [row] = failures.to_pylist()
    assert (row["video_id"], row["path"], row["kind"], row["category"]) == (bad_id, f"{src}/{bad_id}", kind, "bad name")
    assert "not valid UTF-8" in row["message"]
    again = run_ingest([src], out, workers=0, progress=False)  # a re-run keeps the same rows
    assert (again["ok"], again["failed"], again["units_run"], again["units_skipped"]) == (2, 1, 0, 1)


# ------------------------------------------------------------------------------- 3. negative workers
@pytest.mark.parametrize("how", ["option", "config"])
def test_negative_workers_is_an_error_before_anything_is_written(tmp_path, clips, how):
    _copy(clips[0], tmp_path / "src" / "a.mp4")
    if how == "option":  # the command's own range check
        extra = ["--workers", "-1"]
    else:  # a config file's value: the key table's range check names the file and the key
        (tmp_path / "ingest.yaml").write_text("workers: -1\n")
        extra = ["-c", str(tmp_path / "ingest.yaml")]
    proc = subprocess.run([LATTE, "ingest", "--out", str(tmp_path / "out"), "--source", str(tmp_path / "src"),
                           *extra], capture_output=True, text=True, timeout=60)  # it hung forever
    one_error_line(proc, 2, "--workers" if how == "option" else "ingest.yaml: workers", "-1")
    assert not (tmp_path / "out").exists()
    with pytest.raises(IngestError, match="--workers"):
        run_ingest([tmp_path / "src"], tmp_path / "out", workers=-2, progress=False)
    assert not (tmp_path / "out").exists()


def test_negative_workers_stops_the_shared_runner_and_the_cache_stage(tmp_path, clips, fixtures_dir):
    with pytest.raises(UserError, match="--workers"):
        run_units(len, [{"unit_id": "u"}], lambda spec, result: None, workers=-1)
    from latte_toolkit.pipelines.cache import run_cache
    _copy(clips[0], tmp_path / "src" / "a.mp4")
    run_ingest([tmp_path / "src"], tmp_path / "ingest", workers=0, progress=False)
    with pytest.raises(UserError, match="--workers"):  # it hung forever
        run_cache(tmp_path / "ingest", fixtures_dir / "vae" / "vae_small_diffusers", tmp_path / "cache",
                  image_size=32, workers=-1, progress=False)


# ------------------------------------------------------------------------------- 4. sources that yield nothing
def _folder_named_like_a_video(root):
    (root / "x.mp4").mkdir()
    return root / "x.mp4"


def _empty_folder(root):
    (root / "nothing").mkdir()
    return root / "nothing"


def _empty_csv(root):
    (root / "list.csv").write_text("")
    return root / "list.csv"


def _header_only_csv(root):
    (root / "list.csv").write_text("video,caption,class\n")
    return root / "list.csv"


def _empty_json_list(root):
    (root / "list.json").write_text("[]")
    return root / "list.json"


@pytest.mark.parametrize("make", [_folder_named_like_a_video, _empty_folder, _empty_csv, _header_only_csv,
                                  _empty_json_list])
def test_a_source_that_yields_no_input_is_an_error(tmp_path, clips, make):
    _copy(clips[0], tmp_path / "good" / "a.mp4")
    empty = make(tmp_path)
    with pytest.raises(IngestError, match=re.escape(str(empty))):
        run_ingest([tmp_path / "good", empty], tmp_path / "out", workers=0, progress=False)
    assert not (tmp_path / "out").exists()
    if make is _folder_named_like_a_video:
        proc = _ingest(tmp_path / "out", empty)
        one_error_line(proc, 2, empty)
        assert not (tmp_path / "out").exists()


def test_a_folder_named_like_a_video_inside_a_source_is_a_folder(tmp_path, clips):
    src = tmp_path / "src"
    write_frame_folder(src / "frames.mp4", moving_square_frames(6))  # a frame folder
    _copy(clips[0], src / "clips.mp4" / "inner.mp4")  # a folder holding a video
    (src / "empty.mp4").mkdir()  # an empty frame folder
    summary = run_ingest([src], tmp_path / "out", workers=0, progress=False)
    manifest = {row["video_id"]: row for row in _rows(tmp_path / "out" / "manifest.parquet")}
    assert sorted(manifest) == ["clips.mp4/inner.mp4", "frames.mp4"]
    assert manifest["frames.mp4"]["kind"] == "frames" and manifest["frames.mp4"]["num_frames"] == 6
    assert summary["failed_by_category"] == {"empty": 1}


# ------------------------------------------------------------------------------- 5. symbolic-link loops
def test_symlink_loops_are_not_followed_and_broken_links_fail_alone(tmp_path, clips):
    src = tmp_path / "src"
    _copy(clips[0], src / "a.mp4")
    _copy(clips[1], src / "sub" / "b.mp4")
    os.symlink(src, src / "loop")  # back to the root
    os.symlink(src / "sub", src / "sub" / "again")  # back to its own folder
    os.symlink(src / "nothere.mp4", src / "broken.mp4")  # a link to nothing
    os.symlink(src / "ring2.mp4", src / "ring1.mp4")  # two links to each other
    os.symlink(src / "ring1.mp4", src / "ring2.mp4")
    out = tmp_path / "out"
    proc = _ingest(out, src)
    _no_error(proc, 1)
    assert "2 usable, 3 failed of 5 inputs" in proc.stdout
    assert "loop" in proc.stderr and "not followed" in proc.stderr
    assert _ids(out / "manifest.parquet") == ["a.mp4", "sub/b.mp4"]
    failures = {row["video_id"]: row for row in _rows(out / "failures.parquet")}
    assert {key: row["category"] for key, row in failures.items()} == {
        "broken.mp4": "missing", "ring1.mp4": "missing", "ring2.mp4": "missing"}
    assert "broken symbolic link" in failures["broken.mp4"]["message"]


# ------------------------------------------------------------------------------- 6. read-only output
@pytest.fixture
def mounted(tmp_path):
    """mounted(options) -> a fresh tmpfs folder; all are unmounted at the end."""
    mounts = []

    def mount(options):
        folder = tmp_path / f"mount{len(mounts)}"
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
        mounts.append(folder)
        return folder
    yield mount
    for folder in reversed(mounts):
        unmount(folder)


@needs_root
@pytest.mark.parametrize("where", ["the empty read-only folder", "a new folder in it", "a finished job on it"])
def test_a_read_only_output_folder_isone_error_line(tmp_path, clips, mounted, where):
    _copy(clips[0], tmp_path / "src" / "a.mp4")
    disk = mounted("size=1m")
    out = disk if where != "a new folder in it" else disk / "out"
    if where == "a finished job on it":
        assert run_ingest([tmp_path / "src"], out, workers=0, progress=False)["ok"] == 1
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    proc = _ingest(out, tmp_path / "src")
    line = one_error_line(proc, 2, out)
    assert "Read-only file system" in line


def test_an_output_path_that_is_a_file_is_an_error(tmp_path, clips):
    _copy(clips[0], tmp_path / "src" / "a.mp4")
    (tmp_path / "out").write_text("a file")
    with pytest.raises(IngestError, match=re.escape(f"{tmp_path / 'out'} is a file, not a folder")):
        run_ingest([tmp_path / "src"], tmp_path / "out", workers=0, progress=False)


# ------------------------------------------------------------------------------- 7. a full disk
def _fill(folder):
    """Take every free byte of the file system holding `folder`."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


@needs_root
def test_a_ledger_append_on_a_full_disk_leaves_no_partial_line(mounted):
    disk = mounted("size=64k")
    ledger = Ledger(disk)
    records = [{"unit_id": f"u-{i:04d}", "pad": "x" * 150} for i in range(21)]  # 21 x 183 bytes: most of a page
    for record in records:
        ledger.append(record)
    before = (disk / "ledger.jsonl").read_bytes()
    assert 3000 < len(before) < 4096 - 64  # the next record starts in this page and needs another one
    _fill(disk)
    with pytest.raises(DiskFull, match=re.escape(str(disk))):
        ledger.append({"unit_id": "u-last", "pad": "y" * 400})
    assert (disk / "ledger.jsonl").read_bytes() == before
    assert Ledger(disk).records() == records


def _ingest_disk_rows(out):
    return pq.read_table(out / "manifest.parquet"), pq.read_table(out / "failures.parquet")


@needs_root
@pytest.mark.parametrize("size_kb", [8, 20, 36])
def test_a_full_disk_stops_ingest_and_a_rerun_completes_it(tmp_path, clips, mounted, size_kb):
    src = tmp_path / "src"
    for i in range(12):
        _copy(clips[i % 3], src / f"v{i:02d}.mp4")
    (src / "broken.mp4").write_text("not a video")
    reference = tmp_path / "reference"
    run_ingest([src], reference, workers=0, unit_size=1, progress=False)
    # 2, 5 or 9 of the ~17 pages the job needs: with 2 the first ledger append finds no page, with 5
    # and 9 a unit's Parquet write does
    disk = mounted(f"size={size_kb}k")
    out = disk / "out"
    proc = _ingest(out, src, extra=["--unit-size", "1"])
    one_error_line(proc, 1, "no space left", disk)
    ledger = out / "ledger.jsonl"
    assert not ledger.exists() or ledger.read_bytes()[-1:] in (b"", b"\n")  # no torn line
    committed = read_ledger(out)
    assert len(committed) < 13
    assert len(latest_rows(str(out), committed)) == len(committed)  # every committed unit is intact
    assert not [name for name in os.listdir(out / "units") if name.startswith(".staging-")]
    subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
    again = run_ingest([src], out, workers=0, unit_size=1, progress=False)
    assert (again["units_run"], again["units_skipped"]) == (13 - len(committed), len(committed))
    manifest, failures = _ingest_disk_rows(out)
    expected_manifest, expected_failures = _ingest_disk_rows(reference)
    assert manifest.equals(expected_manifest) and failures.equals(expected_failures)


# ------------------------------------------------------------------------------- 8. a damaged ledger
def _garbage_line(lines):
    lines[1] = b"{\"unit_id\": \"u-1\", \"ok\n"  # a line cut short, then the next record written after it


def _not_utf8(lines):
    lines[1] = b"\xff\xfe\n"


def _not_a_record(lines):
    lines[1] = b"[1, 2, 3]\n"


@pytest.mark.parametrize("damage", [_garbage_line, _not_utf8, _not_a_record])
def test_a_damaged_ledger_line_is_one_error_naming_the_file_and_line(tmp_path, clips, damage):
    for i in range(3):
        _copy(clips[i], tmp_path / "src" / f"v{i}.mp4")
    out = tmp_path / "out"
    run_ingest([tmp_path / "src"], out, workers=0, unit_size=1, progress=False)
    ledger = out / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    damage(lines)
    ledger.write_bytes(b"".join(lines))
    with pytest.raises(UserError, match=re.escape(f"{ledger}: line 2 ")):
        read_ledger(out)
    if damage is _garbage_line:
        proc = _ingest(out, tmp_path / "src", extra=["--unit-size", "1"])
        one_error_line(proc, 2, ledger, "line 2")
        assert ledger.read_bytes() == b"".join(lines)  # left as it was for the user to repair


def test_a_torn_last_ledger_line_is_still_cut_and_its_unit_redone(tmp_path, clips):
    for i in range(3):
        _copy(clips[i], tmp_path / "src" / f"v{i}.mp4")
    out = tmp_path / "out"
    run_ingest([tmp_path / "src"], out, workers=0, unit_size=1, progress=False)
    ledger = out / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    ledger.write_bytes(b"".join(lines[:2]) + lines[2][:20])  # killed while writing the last line
    assert len(read_ledger(out)) == 2  # a reader ignores it
    summary = run_ingest([tmp_path / "src"], out, workers=0, unit_size=1, progress=False)
    assert summary["units_run"] == 1 and summary["ok"] == 3
    assert [json.loads(line)["unit_id"] for line in ledger.read_bytes().splitlines()][:2] == [
        json.loads(line)["unit_id"] for line in lines[:2]]
