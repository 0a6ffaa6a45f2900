"""`latte convert latte|vae`: official checkpoints into MindSpore files."""
import json

import click

from latte_core.atomic import strict_json_line
from latte_core.keys import OPTIONAL_STR, Key, KeyTable
from latte_toolkit.pipelines.config import ConfigError

from . import BadInput, configured, key_option, main


CONVERT_LATTE_KEYS = KeyTable([
    Key("source", str, None, "official Latte checkpoint: .pt/.pth/.bin (read without torch), .safetensors or .ckpt"),
    Key("target", str, None, "output file: .ckpt (MindSpore) or .safetensors"),
    Key("model_name", OPTIONAL_STR, None, "check the weights are this variant (e.g. Latte-XL/2); read off the "
                                          "weights otherwise"),
], {}, ConfigError)

CONVERT_VAE_KEYS = KeyTable([
    Key("source", str, None, "a diffusers folder (config.json + diffusion_pytorch_model.safetensors/.bin) or one "
                             "weights file in the diffusers or original LDM layout (first_stage_model. prefix "
                             "allowed)"),
    Key("target", str, None, "output file: .ckpt (MindSpore) or .safetensors"),
    Key("vae_config", OPTIONAL_STR, None, "diffusers config.json for a single weights file; otherwise the "
                                          "architecture is read off the weights, with 32 norm groups as in every "
                                          "published SD VAE"),
], {}, ConfigError)


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
    # kept here: latte_core.convert (MindSpore) adds ~1.6 s to `latte --help`
    from latte_core.convert import convert_latte
    architecture = convert_latte(config["source"], config["target"], config["model_name"])
    click.echo(strict_json_line({"target": config["target"], "architecture": architecture}))


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
    # kept here: latte_core.convert (MindSpore) adds ~1.6 s to `latte --help`
    from latte_core.convert import convert_vae
    vae_config = None
    if config["vae_config"] is not None:
        try:
            with open(config["vae_config"]) as handle:
                vae_config = json.load(handle)
        except (OSError, ValueError) as err:
            raise BadInput(f"{config['vae_config']}: unreadable config ({err})") from None
    result = convert_vae(config["source"], config["target"], vae_config)
    click.echo(strict_json_line({"target": config["target"], "config": result}))
