"""`latte train-vae`: train a small AutoencoderKL on a manifest's frames."""

import click

from latte_core.atomic import strict_json_line
from latte_toolkit.pipelines.config import save_resolved_config
from latte_toolkit.train.config import TRAIN_VAE_KEYS

from . import BadInput, IntList, configured, key_option, main, setup_mindspore

RESOLVED_CONFIG = "train_vae_config.json"  # beside train_vae_summary.json in the VAE folder


@main.command("train-vae")
@configured(
    TRAIN_VAE_KEYS,
    key_option("manifest", type=click.Path(exists=True), help="Ingest folder whose frames to learn."),
    key_option("out", "--out", type=click.Path(file_okay=False), help="New diffusers VAE folder."),
    key_option("image_size", "--image-size", help="Frame size (crop rule) [64]."),
    key_option("block_out_channels", type=IntList()),
    key_option("layers_per_block"),
    key_option("norm_num_groups", "--norm-groups"),
    key_option("latent_channels"),
    key_option("steps"),
    key_option("batch_size", "--batch"),
    key_option("learning_rate", "--lr"),
    key_option("kl_weight"),
    key_option("seed"),
    key_option("init_vae", "--init-vae", type=click.Path(exists=True)),
    key_option("decoder_only", "--decoder-only", is_flag=True),
)
def train_vae_command(config):
    """Train a small AutoencoderKL (L1 reconstruction + KL) on a manifest's frames.

    Writes a diffusers folder (config.json with the measured scaling_factor, safetensors) with
    train_vae_log.jsonl, loss_curve.png, train_vae_summary.json and train_vae_config.json (the
    resolved config) beside it.

    With --init-vae it fine-tunes that VAE; with --decoder-only as well, only its decoder, keeping its
    latents (and the caches and Latte weights made with it) valid.

    \b
    Example:
      latte train-vae --manifest work/ingest --out models/vae-clouds --image-size 64 --steps 2000
      latte train-vae --manifest work/more --out models/vae-2 --init-vae models/vae-clouds --decoder-only
    """
    setup_mindspore("CPU")
    # kept here: train-vae (MindSpore) adds ~2.8 s to `latte --help`
    from latte_toolkit.train.vae import train_vae
    try:
        summary = train_vae(config["manifest"], config["out"], image_size=config["image_size"],
                            block_out_channels=tuple(config["block_out_channels"]),
                            layers_per_block=config["layers_per_block"], norm_num_groups=config["norm_num_groups"],
                            latent_channels=config["latent_channels"], steps=config["steps"],
                            batch_size=config["batch_size"], learning_rate=config["learning_rate"],
                            kl_weight=config["kl_weight"], seed=config["seed"], init_vae=config["init_vae"],
                            decoder_only=config["decoder_only"])
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as err:
        raise BadInput(str(err)) from None
    save_resolved_config(config["out"], config, RESOLVED_CONFIG)
    click.echo(strict_json_line(summary))
