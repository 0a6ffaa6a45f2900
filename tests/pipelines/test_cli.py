import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from latte_toolkit.pipelines.cli import main


def test_help_lists_the_stages_with_an_example():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for stage in ("convert", "bench"):
        assert stage in result.output
    assert "Example" in result.output


def test_unknown_variant_is_bad_usage():
    result = CliRunner().invoke(main, ["bench", "step", "--model", "Latte-M/2"])
    assert result.exit_code == 2
    assert "unknown Latte variant 'Latte-M/2'" in result.output and "Latte-XL/8" in result.output


@pytest.mark.slow
def test_bench_step_prints_one_json_line_with_the_figures(tmp_path):
    latte = os.path.join(os.path.dirname(sys.executable), "latte")
    proc = subprocess.run([latte, "bench", "step", "--model", "Latte-S/8", "--frames", "2", "--latent", "16",
                           "--batch", "1", "--steps", "3", "--images", "1"],  # the joint step: 2 frames + 1 image
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert figures["model"] == "Latte-S/8" and figures["steps"] == 3 and len(figures["step_times_s"]) == 2
    assert figures["images"] == 1
    assert 0 < figures["median_step_s"] < figures["first_step_s"]
    assert figures["peak_rss_mb"] > 100
    # both kernel paths, each measured in its own process
    assert figures["kernels"] == "on" and figures["kernels_off"]["kernels"] == "off"
    assert 0 < figures["kernels_off"]["median_step_s"] < figures["kernels_off"]["first_step_s"]
    assert figures["kernels_speedup"] == round(figures["kernels_off"]["median_step_s"] / figures["median_step_s"], 3)
    assert figures["kernel_ms_per_step"]["dense_backward"] > 0 and figures["matmul"]["distinct_shapes"] > 1
    assert figures["matmul"]["gflops_in_step"] > 0 and figures["matmul"]["numpy_gflops_same_shapes"] > 0
