import json

import numpy as np
import pytest
from click.testing import CliRunner

from latte_core import AutoencoderKL
from latte_toolkit.cli import main


@pytest.mark.slow
def test_train_vae_learns_the_frames_and_writes_a_diffusers_folder(caches, tmp_path):
    """50 steps on the test clips: the loss falls, the folder loads, and its scaling factor makes the
    latents of these frames unit-variance. (50 steps also pass the point where a separate ops.pad's
    gradient hung MindSpore's CPU runtime: Downsample2D pads inside its convolution.)"""
    out = tmp_path / "vae"
    result = CliRunner().invoke(main, ["train-vae", "--manifest", str(caches["ingest"]), "--out", str(out),
                                       "--image-size", "32", "--block-out-channels", "16,32,32", "--norm-groups", "8",
                                       "--steps", "50", "--batch", "8", "--lr", "2e-3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    losses = [json.loads(line)["loss"] for line in (out / "train_vae_log.jsonl").read_text().splitlines()]
    assert len(losses) == 50 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    vae = AutoencoderKL.from_pretrained(out)
    assert summary["scaling_factor"] == round(vae.config["scaling_factor"], 5)  # the summary rounds for display
    from latte_toolkit.train.vae import load_frames
    pixels = (load_frames(caches["ingest"], 32, 64).astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)
    mean, _ = vae.encode_video(pixels[None])
    assert 0.7 < np.std(vae.scale_latents(mean)) < 1.4
    again = CliRunner().invoke(main, ["train-vae", "--manifest", str(caches["ingest"]), "--out", str(out)])
    assert again.exit_code == 2 and "already holds" in again.output


@pytest.mark.slow
def test_a_decoder_only_fine_tune_keeps_the_latents_and_changes_the_decoder(caches, tmp_path):
    """A VAE of 20 steps, fine-tuned decoder-only for 20 more: every encoder weight and the scaling factor
    are the start's to the bit (so its caches and Latte weights stay valid), the decoder's have moved."""
    from safetensors.numpy import load_file
    start, tuned = tmp_path / "start", tmp_path / "tuned"
    tiny = ["--manifest", str(caches["ingest"]), "--image-size", "32", "--block-out-channels", "16,32,32",
            "--norm-groups", "8", "--steps", "20", "--batch", "4"]
    assert CliRunner().invoke(main, ["train-vae", *tiny, "--out", str(start)]).exit_code == 0
    result = CliRunner().invoke(main, ["train-vae", *tiny, "--out", str(tuned), "--init-vae", str(start),
                                       "--decoder-only", "--block-out-channels", "8,8"])  # the init's architecture wins
    assert result.exit_code == 0, result.output
    before = load_file(start / "diffusion_pytorch_model.safetensors")
    after = load_file(tuned / "diffusion_pytorch_model.safetensors")
    assert set(before) == set(after)
    kept = [name for name in before if not name.startswith(("decoder.", "post_quant_conv."))]
    assert kept and all(np.array_equal(before[name], after[name]) for name in kept)
    assert any(not np.array_equal(before[name], after[name]) for name in before if name.startswith("decoder."))
    assert (json.loads((tuned / "config.json").read_text())["scaling_factor"]
            == json.loads((start / "config.json").read_text())["scaling_factor"])
