"""`latte train-vae`: train a (small) AutoencoderKL on the frames of an ingest manifest.

    frames (crop rule, [-1, 1]) ─ random batches (numpy, seeded by (seed, step)) ─ encode ─
      z = mean + std·ε ─ decode ─ loss = |x − x̂| + kl_weight · KL(q(z|x) ‖ N(0, I)) (per latent
      element) ─ TrainStep (train/step.py: Adam, no weight decay; 100 warm-up steps) ─
      scaling_factor = 1 / std of the latent means (what Stable Diffusion's 0.18215 is) ─ a diffusers
      folder (config.json + safetensors), train_vae_log.jsonl, train_vae_summary.json, loss_curve.png
      (the command adds train_vae_config.json, its resolved options)

No perceptual or adversarial loss: enough for smooth procedural footage, not for photographs.

Fine-tuning (`init_vae`): start from an existing VAE folder (its architecture, not the architecture
keys). With `decoder_only` only the decoder and post_quant_conv train: the encoder, and with it every
latent and the scaling_factor, stay the init's, so the caches and the Latte weights made with that VAE
stay valid while the decoder learns to draw what it drew badly (as Stability's sd-vae-ft-mse fine-tuned
only the decoder; here: sky colours the shipped VAE never saw, pretrained/EXPERIMENTS.md #27).
"""
import logging
import os
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from tqdm.auto import tqdm

from latte_core import AutoencoderKL
from latte_core.atomic import make_output_dir, strict_json_line, write_figures_json
from latte_core.plot import plot_loss_curve
from latte_core.vae import load_vae
from latte_toolkit.datasets.video import center_crop_resize, iter_frames, read_manifest, to_pixels

from .step import TrainStep, Updater

logger = logging.getLogger(__name__)


def load_frames(manifest, image_size, max_frames):
    """Every frame of the manifest's videos (crop rule applied), uint8 (N, S, S, 3), up to max_frames."""
    frames = []
    for row in read_manifest(manifest):
        for frame in iter_frames(row["path"], row["kind"]):
            frames.append(center_crop_resize(frame, image_size))
            if len(frames) >= max_frames:
                return np.stack(frames)
    if not frames:
        raise ValueError(f"{manifest}: the manifest lists no frames")
    return np.stack(frames)


class VAELoss(nn.Cell):
    """Mean L1 reconstruction error of a posterior sample plus kl_weight · the mean KL per element."""

    def __init__(self, vae, kl_weight):
        super().__init__(auto_prefix=False)  # keep diffusers' parameter names
        self.vae = vae
        self.kl_weight = kl_weight

    def construct(self, x, noise):
        mean, logvar = ops.split(self.vae.encode_moments(x), self.vae.latent_channels, axis=1)
        logvar = ops.clamp(logvar, -30.0, 20.0)
        reconstruction = ops.abs(x - self.vae.decode(mean + ops.exp(0.5 * logvar) * noise)).mean()
        kl = (0.5 * (ops.square(mean) + ops.exp(logvar) - 1.0 - logvar)).mean()
        return reconstruction + self.kl_weight * kl


# What a decoder-only fine-tune trains: everything after the latent (diffusers' names).
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def train_vae(manifest, out_dir, image_size=64, block_out_channels=(32, 64, 64), layers_per_block=1,
              norm_num_groups=16, latent_channels=4, steps=2000, batch_size=16, learning_rate=1e-3,
              kl_weight=1e-3, seed=0, max_frames=20000, init_vae=None, decoder_only=False, progress=True):
    """Train and write a diffusers VAE folder at out_dir; returns a summary dict. init_vae: a VAE to
    start from (its architecture); decoder_only: train its decoder only, keeping its latents."""
    if decoder_only and not init_vae:
        raise ValueError("decoder_only needs init_vae: the VAE whose encoder (and latents) to keep")
    if os.path.exists(os.path.join(out_dir, "config.json")):
        raise FileExistsError(f"{out_dir} already holds a VAE; choose a new folder")
    make_output_dir(out_dir, "out", create=False)  # before any work; writes nothing
    ms.set_seed(seed)
    vae = load_vae(init_vae) if init_vae else AutoencoderKL(
        block_out_channels=block_out_channels, layers_per_block=layers_per_block, latent_channels=latent_channels,
        norm_num_groups=norm_num_groups)
    frames = load_frames(manifest, image_size, max_frames)
    pixels = to_pixels(frames)  # (N, 3, S, S)
    latent = image_size // vae.downsample_factor
    params = vae.trainable_params()
    if decoder_only:
        params = [p for p in params if p.name.startswith(DECODER_PREFIXES)]
    updater = Updater(params, learning_rate=learning_rate)
    vae.set_train(True)  # MindSpore's convolutions, which have gradients (the CPU kernel's is inference only)
    step_fn = TrainStep(VAELoss(vae, kl_weight), updater)
    make_output_dir(out_dir, "out")
    log_path = os.path.join(out_dir, "train_vae_log.jsonl")
    started = time.perf_counter()
    losses = []
    with open(log_path, "w") as log:
        for step in tqdm(range(steps), unit="step", desc="train-vae", disable=not progress):
            rng = np.random.default_rng([seed, step])
            batch = pixels[rng.integers(0, len(pixels), batch_size)]
            noise = rng.standard_normal((batch_size, latent_channels, latent, latent), dtype=np.float32)
            updater.set_learning_rate(learning_rate * min(1.0, (step + 1) / 100))  # 100 warm-up steps
            loss, norm, finite = step_fn(Tensor(batch), Tensor(noise))
            loss = float(loss.asnumpy())
            if not bool(finite.asnumpy()):
                raise FloatingPointError(f"train-vae step {step + 1}: non-finite gradients (loss {loss})")
            losses.append(loss)
            log.write(strict_json_line({"step": step + 1, "loss": loss, "grad_norm": float(norm.asnumpy())}) + "\n")
    vae.set_train(False)
    means = np.concatenate([vae.encode(Tensor(pixels[i:i + 64])).mean.asnumpy() for i in range(0, len(pixels), 64)])
    if not decoder_only:  # a kept encoder keeps its latents' scale: the Latte weights made with it depend on it
        vae.scaling_factor = float(1.0 / means.std())
        vae.config["scaling_factor"] = vae.scaling_factor
    vae.save_pretrained(out_dir)
    plot_loss_curve(list(range(1, steps + 1)), losses, os.path.join(out_dir, "loss_curve.png"), "VAE loss")
    reconstruction = vae.decode_video(means[None, : min(len(means), 64)], micro_batch=16)[0]
    error = float(np.abs(reconstruction - pixels[: len(reconstruction)]).mean())
    summary = {"frames": len(pixels), "steps": steps, "final_loss": float(np.mean(losses[-50:])),
               "reconstruction_l1": round(error, 4), "scaling_factor": round(vae.scaling_factor, 5),
               "init_vae": init_vae, "decoder_only": decoder_only,
               "seconds": round(time.perf_counter() - started, 1), "out_dir": out_dir}
    write_figures_json(summary, os.path.join(out_dir, "train_vae_summary.json"))
    return summary
