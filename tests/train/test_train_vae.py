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
