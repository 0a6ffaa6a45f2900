import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from latte_toolkit.cli import main


def test_help_lists_the_stages_with_an_example():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for stage in ("convert", "bench"):
        assert stage in result.output
    assert "Example" in result.output


@pytest.mark.slow
def test_bench_forward_counts_every_matmul_and_checks_the_paths_agree(tmp_path):
    latte = os.path.join(os.path.dirname(sys.executable), "latte")
    proc = subprocess.run([latte, "bench", "forward", "--model", "Latte-S/4", "--frames", "4", "--latent", "8",
                           "--batch", "1", "--repeats", "2"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "forward" and len(figures["forward_times_s"]) == 2
    assert figures["kernels"] == "on" and figures["kernels_off"]["kernels"] == "off"
    assert figures["kernels_on_vs_off_max_rel"] <= 1e-4  # the bench raises above it
    # Latte-S/4 (12 blocks, 384 wide, 6 heads) on 4 frames of 2x2 tokens: the products, counted by hand.
    # Per block: adaLN 1x2304x384, qkv 16x1152x384, projection 16x384x384, MLP 16x1536x384 and 16x384x1536;
    # spatial attention: 4 frames x 6 heads of 4x4x64 (QKᵀ) and 4x64x4 (AV); temporal: 4 tokens x 6 heads, the same.
    d, rows = 384, 16
    block = 2 * (d * 6 * d + rows * 3 * d * d + rows * d * d + 2 * rows * 4 * d * d + 2 * 24 * 4 * 4 * 64)
    outer = 2 * (rows * d * 4 * 16 + 256 * d + d * d + d * 2 * d + rows * d * 4 * 16 * 2)
    assert figures["matmul_floor"]["gflop"] == round((12 * block + outer) / 1e9, 2)
    seconds = figures["median_forward_s"]
    assert abs(figures["gflops"] - (12 * block + outer) / seconds / 1e9) <= 0.05 + 1e-3 * figures["gflops"]
    assert 0 < figures["matmul_floor"]["forward_to_numpy_floor"]
    result = CliRunner().invoke(main, ["bench", "forward", "--model", "Latte-S/4", "--latent", "6"])
    assert result.exit_code == 2 and "not a multiple of Latte-S/4's patch size 4" in result.output


@pytest.mark.slow
def test_bench_vae_times_encode_and_decode_and_counts_every_convolution(tmp_path):
    latte = os.path.join(os.path.dirname(sys.executable), "latte")
    proc = subprocess.run([latte, "bench", "vae", "--size", "16", "--batch", "1", "--repeats", "1", "--kernels", "on"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("encode_frames_per_s", "decode_frames_per_s"):
        assert figures[key] > 0
    # sd-vae-ft-mse's encoder on one 16² frame, by hand: conv_in 3->128 at 16²; per level (128, 256, 512, 512 at
    # 16, 8, 4, 2) two resnets (3x3 convs in->out, out->out, out->out, out->out; a 1x1 shortcut where the width
    # grows), a stride-2 3x3 downsampler after all but the last; the mid block's two resnets at 2²; conv_out
    # 512->8; quant_conv 8->8 (1x1)
    def conv(cin, cout, size, k=3):
        return 2 * cin * k * k * cout * size * size
    flops = conv(3, 128, 16)
    widths, sizes = (128, 256, 512, 512), (16, 8, 4, 2)
    previous = 128
    for width, size in zip(widths, sizes):
        flops += conv(previous, width, size) + 3 * conv(width, width, size)
        flops += conv(previous, width, size, k=1) if previous != width else 0
        flops += conv(width, width, size // 2) if size > 2 else 0
        previous = width
    flops += 4 * conv(512, 512, 2) + conv(512, 8, 2) + conv(8, 8, 2, k=1)
    floor = figures["conv_floor"]
    assert floor["gflop"] == round(flops / 1e9, 1) and floor["convolutions"] == 28
    # gflops has one decimal; the seconds are printed to the microsecond
    assert abs(figures["encode_conv_gflops"] - flops / figures["median_call_s"] / 1e9) <= 0.05 + 1e-3 * figures[
        "encode_conv_gflops"]
    assert figures["kernel_ms_per_encode"]["conv2d_forward"] > 0 and floor["encode_to_numpy_floor"] > 0


def test_unknown_variant_is_bad_usage():
    result = CliRunner().invoke(main, ["bench", "step", "--model", "Latte-M/2"])
    assert result.exit_code == 2
    assert "unknown Latte variant 'Latte-M/2'" in result.output and "Latte-XL/8" in result.output


@pytest.mark.slow
def test_bench_step_prints_one_json_line_with_the_figures(tmp_path):
    latte = os.path.join(os.path.dirname(sys.executable), "latte")
    # 2 blocks of Latte-S/8 (its 12 take a minute more to compile in each path); the joint step: 2 frames + 1 image
    proc = subprocess.run([latte, "bench", "step", "--model", "Latte-S/8", "--depth", "2", "--frames", "2",
                           "--latent", "16", "--batch", "1", "--steps", "3", "--images", "1"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert figures["model"] == "Latte-S/8" and figures["depth"] == 2
    assert figures["steps"] == 3 and len(figures["step_times_s"]) == 2
    assert figures["images"] == 1
    assert 0 < figures["median_step_s"] < figures["first_step_s"]
    assert figures["peak_rss_mb"] > 100
    # both kernel paths, each measured in its own process
    assert figures["kernels"] == "on" and figures["kernels_off"]["kernels"] == "off"
    assert 0 < figures["kernels_off"]["median_step_s"] < figures["kernels_off"]["first_step_s"]
    assert figures["kernels_speedup"] == round(figures["kernels_off"]["median_step_s"] / figures["median_step_s"], 3)
    assert figures["kernel_ms_per_step"]["dense_backward"] > 0 and figures["matmul"]["distinct_shapes"] > 1
    assert figures["matmul"]["gflops_in_step"] > 0 and figures["matmul"]["numpy_gflops_same_shapes"] > 0
