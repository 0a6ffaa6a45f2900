"""`latte bench ingest --keyframe-frames`: the keyframe check's cost on a synthetic video is measured and
reported as strict JSON (the figures themselves are the benchmark's to state, not a test's); a size
H.264 cannot hold is refused before anything runs."""
import json
import os
import subprocess

from conftest import BIN
from media import moving_square_frames, one_error_line, snapshot, write_mp4

LATTE = os.path.join(BIN, "latte")


def _strict(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_the_keyframe_check_cost_is_measured_on_a_synthetic_video(tmp_path):
    write_mp4(tmp_path / "src" / "clip.mp4", moving_square_frames(8))
    before = snapshot(tmp_path / "src")
    done = subprocess.run([LATTE, "bench", "ingest", "--source", str(tmp_path / "src"), "--replan-inputs", "0",
                           "--keyframe-frames", "300", "--keyframe-size", "32", "--repeats", "2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    check = _strict(done.stdout.strip().splitlines()[-1])["keyframe_check"]
    assert (check["frames"], check["size"], check["repeats"]) == (300, 32, 2) and 1 <= check["keyframes"] <= 300
    assert min(check["without_check_s"], check["with_check_s"], check["verify_s"]) > 0
    # the ratio is of the unrounded medians; each median is printed to 0.1 ms, which moves a ratio of
    # milliseconds-long probes by a few percent: 5 % bounds it
    assert abs(check["ratio"] - check["with_check_s"] / check["without_check_s"]) <= 0.05 * check["ratio"]
    assert snapshot(tmp_path / "src") == before


def test_an_odd_keyframe_size_is_refused_before_anything_runs(tmp_path):
    write_mp4(tmp_path / "src" / "clip.mp4", moving_square_frames(8))
    done = subprocess.run([LATTE, "bench", "ingest", "--source", str(tmp_path / "src"), "--keyframe-frames", "10",
                           "--keyframe-size", "33"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    one_error_line(done, 2, "--keyframe-size must be even", "33")
    assert sorted(os.listdir(tmp_path)) == ["src"]
