"""`latte report`: summarise a cache folder or a curate folder."""

import click

from latte_core.atomic import strict_json_line
from latte_toolkit.pipelines.config import REPORT_KEYS

from . import BadInput, PathOrURL, configured, key_option, main


@main.command()
@configured(
    REPORT_KEYS,
    key_option("cache", argument=True, metavar="CACHE_OR_CURATE_DIR", type=PathOrURL(exists=True, file_okay=False)),
    key_option("verify", is_flag=True),
    key_option("plot", type=click.Path(dir_okay=False)),
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def report(config, as_json):
    """Summarise a cache: videos, frames, bytes, size ratio to the sources, failures, time per phase; or
    a curate folder: its funnel, videos -> cuts -> clips -> kept, and the clips dropped per reason.

    --verify re-hashes every shard against the ledger and checks that every stored value is finite;
    it exits 1 on a mismatch or a non-finite value.

    \b
    Example:
      latte report work/cache --verify --plot work/cache_phases.png
      latte report work/curate --plot work/curate_histograms.png
    """
    # kept here: the report (pyarrow, matplotlib) adds ~0.6 s to `latte --help`
    from latte_toolkit.datasets.storage import is_url, local_cache
    from latte_toolkit.pipelines import report as reports
    folder = config["cache"]
    if is_url(folder):  # a cache in an object store: its local copy (each shard checked as it is fetched)
        folder = local_cache(folder, config["storage_options"])
    curate = reports.is_curate_folder(folder)
    try:
        result = (reports.curate_report if curate else reports.cache_report)(folder, config["verify"])
        if config["plot"]:
            plot = reports.plot_curate_histograms if curate else reports.plot_cache_phases
            result["plot"] = plot(folder, config["plot"])
        if folder != config["cache"]:
            result["cache"] = config["cache"]
    except FileNotFoundError as err:
        raise BadInput(str(err)) from None
    units = "units" if curate else "shards"
    if as_json:
        click.echo(strict_json_line(result))
    else:
        for line in (_curate_lines if curate else _cache_lines)(result):
            click.echo(line)
        click.echo("  seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds_by_phase"].items()))
        if config["verify"]:
            click.echo(f"  verified {units}: {result[f'verified_{units}']}")
            for line in result[f"corrupt_{units}"]:
                click.echo(f"  CORRUPT {line}")
            for line in result.get("non_finite", []):  # a cache's stored values (a curate folder stores none)
                click.echo(f"  NON-FINITE {line}")
        if config["plot"]:
            click.echo(f"  plot: {config['plot']}")
    if config["verify"] and (result[f"corrupt_{units}"] or result.get("non_finite")):
        raise SystemExit(1)


def _cache_lines(result):
    yield (f"{result['cache']} ({result['format']}, {result['store']}, {result['dtype']}, "
           f"{result['image_size']}px){'' if result['finished'] else ' — not finished'}")
    yield (f"  {result['videos']} videos, {result['frames']} frames in {result['shards']} shards, "
           f"{result['bytes'] / 1e6:.1f} MB ({result['cache_to_source_bytes']} x the sources)")
    yield f"  failed: {result['failed']} {result['failed_by_category'] or ''}"
    if "text" in result:
        text = result["text"]
        yield (f"  text: {text['width']}-wide caption embeddings from {text['text_encoder']}; "
               f"{text['videos_without_caption']} videos without a caption (the empty prompt's)")


def _curate_lines(result):
    yield f"{result['curate']} (curate){'' if result['finished'] else ' — not finished'}"
    yield (f"  {result['videos']} videos ({result['failed_videos']} failed), {result['frames']} frames, "
           f"{result['cuts']} cuts -> {result['clips']} clips -> {result['kept']} kept"
           + (f" ({result['kept_frames']} frames)" if result["finished"] else " (before the duplicate check)"))
    for reason, count in sorted((result["dropped_by_reason"] or {}).items()):
        yield f"  dropped, {reason}: {count}"
