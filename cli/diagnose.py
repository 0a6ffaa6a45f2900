"""`latte diagnose`: how well a checkpoint denoises its own data, timestep band by band."""

import click

from latte_core.atomic import strict_json_line
from latte_toolkit.inference.config import DIAGNOSE_KEYS

from . import IntList, configured, key_option, main, setup_mindspore


@main.command()
@configured(
    DIAGNOSE_KEYS,
    key_option("checkpoint", type=click.Path(exists=True)),
    key_option("cache", type=click.Path(exists=True, file_okay=False)),
    key_option("vae_checkpoint", "--vae"),
    key_option("out"),
    key_option("timesteps", type=IntList()),
    key_option("round_trip_from", type=IntList()),
    key_option("clips"),
    key_option("seed"),
    key_option("prediction_type"),
)
def diagnose(config):
    """Noise real clips of the cache to each timestep and score one model call on them.

    Per timestep band: eps_mse (the noise error, what the loss shows), x0_mse (the clean latents'
    error) against mean_mse (predicting each channel's mean latent), the x0 prediction's std per
    channel and drift_kept (how much of the clips' drift the decoded x0 keeps: 1 moves as the clip,
    0 is still). Then the clips noised to each t0 of --round-trip-from and sampled back (DDIM): the
    x0_mse, drift_kept and speed of what the model makes of them. Warns when a band from t = 500 on
    predicts x0 worse than the latents' variance:
    there a sample's layout, colours and motion are decided. Writes OUT/diagnose.json and
    OUT/x0_predictions.png (one clip's decoded x0 across t).

    \b
    Example:
      latte diagnose --checkpoint latte-run --cache work/cache --out latte-run/diagnose
    """
    # kept here: the diagnosis (MindSpore, the model, the VAE) adds ~3.7 s to `latte --help`
    from latte_toolkit.inference.diagnose import run_diagnose
    setup_mindspore("CPU", mode="pynative")
    report = run_diagnose(config["checkpoint"], config["cache"], config["out"], config["vae_checkpoint"],
                          config["timesteps"], config["clips"], config["seed"], config["prediction_type"],
                          config["round_trip_from"])
    click.echo(f"{'band':>9} {'eps_mse':>9} {'x0_mse':>9} {'mean_mse':>9} {'drift_kept':>10}  x0_std per channel "
               f"(data {', '.join(f'{s:.2f}' for s in report['latent_std'])})")
    for name, band in report["bands"].items():
        cells = [f"{band[key]:9.4g}" for key in ("eps_mse", "x0_mse", "mean_mse")]
        std = ", ".join(f"{s:.2f}" for s in band["x0_std"])
        click.echo(f"{name:>9} {' '.join(cells)} {band['drift_kept']:10.2f}  {std}")
    for trip in report["round_trips"]:
        click.echo(f"back from t={trip['from_t']}: x0_mse {trip['x0_mse']:.4g}, drift_kept {trip['drift_kept']:.2f}, "
                   f"speed ratio (median) {trip['speed_ratio_median']:.2f}")
    for warning in report["warnings"]:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(strict_json_line({"out": config["out"], "warnings": len(report["warnings"])}))
