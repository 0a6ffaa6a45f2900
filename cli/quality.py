"""`latte quality`: sampled videos against the training videos, two baselines and their drift."""

import click

from latte_core.atomic import strict_json_line
from latte_toolkit.inference.config import QUALITY_KEYS

from . import BadInput, configured, key_option, main, setup_mindspore


@main.command()
@configured(
    QUALITY_KEYS,
    key_option("samples", argument=True, metavar="SAMPLES_DIR", type=click.Path(exists=True, file_okay=False)),
    key_option("manifest", type=click.Path(exists=True)),
    key_option("vae_checkpoint", "--vae"),
    key_option("real_clips"),
)
def quality(config):
    """Check sampled videos against the training videos and two baselines (exit 1 if it fails).

    Appearance: Fréchet distance of per-frame VAE-latent features to real clips, against decoded
    noise. Motion: frame-to-frame change within the real clips' 5th-95th percentile, and real
    frames shuffled in time told apart (their change outside that range or their drift outside the
    real range). Drift: the coherent motion (px/frame, phase correlation
    of consecutive frames) of at least 15 of 16 samples within the real clips' range, as they are and
    after a VAE round trip; a still picture that flickers drifts ~0. Prompts (samples of a text model: their summary.json
    names each one's prompt): each sample's drift direction must be the one its caption names
    ("drifting left / right / up / down") for at least 15 of 16 samples whose prompt is a training
    caption, and its sky colour (nearest real-clip colour centroid) the one its caption names, for as
    many; prompts no training video had are reported apart, with no target.

    \b
    Example:
      latte quality samples/ --manifest work/ingest --vae models/vae-clouds
    """
    # kept here: the quality check and prompt check (the VAE, MindSpore) add ~2.0 s to `latte --help`
    from latte_toolkit.inference.quality import run_quality
    from latte_toolkit.tools.prompt_check import check_prompts_against_manifest
    setup_mindspore("CPU")
    try:
        result = run_quality(config["samples"], config["manifest"], config["vae_checkpoint"], config["real_clips"],
                             prompt_check=check_prompts_against_manifest)
    except (FileNotFoundError, ValueError) as err:
        raise BadInput(str(err)) from None
    click.echo(strict_json_line(result))
    if not result["passed"]:
        raise SystemExit(1)
