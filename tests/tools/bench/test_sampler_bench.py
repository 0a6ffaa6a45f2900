"""`latte bench sampler`: both samplers sample the shipped model and are checked against real clips; bad
requests are one error."""
import json
import math
import os
import subprocess

import pytest

from conftest import BIN


def _bench(*args):
    return subprocess.run([os.path.join(BIN, "latte"), "bench", "sampler", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_the_sampler_bench_checks_both_samplers_on_the_shipped_model(tmp_path):
    work = tmp_path / "bench"
    run = _bench("--videos", "4", "--fast-steps", "2", "--reference-steps", "3", "--batch", "4", "--work", str(work))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for name, sampler, steps in (("fast", "dpm-solver++", 2), ("reference", "ddpm", 3)):
        figures = result[name]
        assert figures["sampler"] == sampler and figures["steps"] == steps, figures
        assert isinstance(figures["passed"], bool) and 0 <= figures["drift_in_range"] <= 4
        assert math.isfinite(figures["frechet_distance"]) and figures["seconds"] > 0
        assert len(list((work / name).glob("sample_*.gif"))) == 4
    assert result["fd_ratio"] == pytest.approx(result["fast"]["frechet_distance"] / result["reference"]["frechet_distance"],
                                               rel=1e-3)  # rounded to 4 digits
    assert result["target_met"] == (result["fast"]["passed"] and result["fd_ratio"] <= 1.1)
    assert len(list((work / "real").glob("*.mp4"))) == 4
    again = _bench("--videos", "4", "--work", str(work))  # would mix two benches' samples
    assert again.returncode == 2 and again.stderr.count("Error:") == 1 and "earlier bench" in again.stderr


@pytest.mark.parametrize("args, needle", [(["--videos", "1"], "videos"), (["--fast-steps", "0"], "--fast-steps"),
                                          (["--checkpoint", "no-such-run"], "no-such-run")])
def test_bad_sampler_bench_requests_are_one_error(tmp_path, args, needle):
    run = _bench(*args, "--work", str(tmp_path / "bench"))
    assert run.returncode == 2 and run.stderr.count("Error:") == 1 and needle in run.stderr, run.stderr
    assert not (tmp_path / "bench" / "fast").exists()
