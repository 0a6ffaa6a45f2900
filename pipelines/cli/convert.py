"""`latte convert latte|vae`: official checkpoints into MindSpore files."""
import json

import click

from latte_toolkit.pipelines.config import CONVERT_LATTE_KEYS, CONVERT_VAE_KEYS

from . import BadInput, configured, key_option, main


@main.group()
def convert():
    """Convert official checkpoints into MindSpore files."""


@convert.command("latte")
@configured(
    CONVERT_LATTE_KEYS,
    key_option("source", type=click.Path(dir_okay=False)),
    key_option("target", type=click.Path(dir_okay=False)),
    key_option("model_name", "--model"),
)
def convert_latte_command(config):
    """Convert an official Latte checkpoint (a state dict, or a training dict: "ema" preferred).

    \b
    Example:
      latte convert latte --source models/skytimelapse.pt --target models/skytimelapse.ckpt
    """
    from latte_core.convert import convert_latte
    architecture = convert_latte(config["source"], config["target"], config["model_name"])
    click.echo(json.dumps({"target": config["target"], "architecture": architecture}))


# no -c here: --config is this command's diffusers config.json
@convert.command("vae")
@configured(
    CONVERT_VAE_KEYS,
    key_option("source", type=click.Path()),
    key_option("target", type=click.Path(dir_okay=False)),
    key_option("vae_config", "--config", type=click.Path(dir_okay=False)),
    yaml=False,
)
def convert_vae_command(config):
    """Convert a Stable Diffusion VAE (e.g. sd-vae-ft-mse) to a MindSpore file with diffusers names.

    \b
    Example:
      latte convert vae --source sd-vae-ft-mse/ --target models/sd-vae-ft-mse.ckpt
    """
    from latte_core.convert import convert_vae
    vae_config = None
    if config["vae_config"] is not None:
        try:
            with open(config["vae_config"]) as handle:
                vae_config = json.load(handle)
        except (OSError, ValueError) as err:
            raise BadInput(f"{config['vae_config']}: unreadable config ({err})") from None
    result = convert_vae(config["source"], config["target"], vae_config)
    click.echo(json.dumps({"target": config["target"], "config": result}))
