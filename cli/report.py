"""`latte report`: summarise a cache folder."""

import click

from latte_core.atomic import strict_json_line
from latte_toolkit.pipelines.config import REPORT_KEYS

from . import BadInput, configured, key_option, main


@main.command()
@configured(
    REPORT_KEYS,
    key_option("cache", argument=True, metavar="CACHE_DIR", type=click.Path(exists=True, file_okay=False)),
    key_option("verify", is_flag=True),
    key_option("plot", type=click.Path(dir_okay=False)),
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def report(config, as_json):
    """Summarise a cache: videos, frames, bytes, size ratio to the sources, failures, time per phase.

    --verify re-hashes every shard against the ledger and checks that every stored value is finite;
    it exits 1 on a mismatch or a non-finite value.

    \b
    Example:
      latte report work/cache --verify --plot work/cache_phases.png
    """
    # kept here: the report (pyarrow, matplotlib) adds ~0.6 s to `latte --help`
    from latte_toolkit.pipelines.report import cache_report, plot_cache_phases
    try:
        result = cache_report(config["cache"], config["verify"])
    except FileNotFoundError as err:
        raise BadInput(str(err)) from None
    if config["plot"]:
        result["plot"] = plot_cache_phases(config["cache"], config["plot"])
    if as_json:
        click.echo(strict_json_line(result))
    else:
        click.echo(f"{result['cache']} ({result['format']}, {result['store']}, {result['dtype']}, "
                   f"{result['image_size']}px){'' if result['finished'] else ' — not finished'}")
        click.echo(f"  {result['videos']} videos, {result['frames']} frames in {result['shards']} shards, "
                   f"{result['bytes'] / 1e6:.1f} MB ({result['cache_to_source_bytes']} x the sources)")
        click.echo(f"  failed: {result['failed']} {result['failed_by_category'] or ''}")
        click.echo("  seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds_by_phase"].items()))
        if "text" in result:
            text = result["text"]
            click.echo(f"  text: {text['width']}-wide caption embeddings from {text['text_encoder']}; "
                       f"{text['videos_without_caption']} videos without a caption (the empty prompt's)")
        if config["verify"]:
            click.echo(f"  verified shards: {result['verified_shards']}")
            for line in result["corrupt_shards"]:
                click.echo(f"  CORRUPT {line}")
            for line in result["non_finite"]:
                click.echo(f"  NON-FINITE {line}")
        if config["plot"]:
            click.echo(f"  plot: {config['plot']}")
    if config["verify"] and (result["corrupt_shards"] or result["non_finite"]):
        raise SystemExit(1)
