"""`latte demo`: the whole pipeline on procedural videos, no downloads."""
import click

from latte_toolkit.tools.config import DEMO_KEYS

from . import configured, key_option, main, setup_mindspore


@main.command()
@configured(
    DEMO_KEYS,
    key_option("out", "--out", type=click.Path(file_okay=False)),
    key_option("videos"),
    key_option("train_steps"),
    key_option("sample_steps"),
    key_option("num_videos"),
    key_option("seed"),
    key_option("quality_clips"),
    key_option("text", "--text", is_flag=True),
)
def demo(config):
    """The whole pipeline on procedural videos, no downloads: generate → ingest → cache → train → sample.

    Each stage saves its resolved config in its folder; the demo's own is OUT/config.resolved.json.

    --text runs the text-to-video demo: captioned clips, the shipped text encoder (random weights)
    and text Latte, one video per prompt, checked by the direction each drifts in and its sky colour.

    \b
    Examples:
      latte demo --out latte-demo
      latte demo --text --out latte-demo-text --num-videos 8
    """
    # kept here: the demo (every stage, MindSpore) adds ~2.5 s to `latte --help`
    from latte_toolkit.tools.demo import run_demo
    setup_mindspore("CPU")
    summary = run_demo(**config)
    out = summary["out"]
    click.echo(f"demo finished in {summary['total_seconds']} s ({summary['seconds']}):")
    click.echo(f"  {summary['videos']} videos: {out}/videos, manifest {out}/ingest/manifest.parquet")
    if summary["train_steps"]:
        click.echo(f"  cache: {out}/cache ({summary['cached_frames']} frames), report {out}/cache_report.json")
        click.echo(f"  training: {summary['train_steps']} steps, loss curve {summary['loss_curve']}")
    else:
        click.echo("  cache and training: none (--train-steps 0): the shipped weights as they are")
    click.echo(f"  samples: {len(summary['samples'])} in {out}/samples (sample_NNN.gif / .mp4 / .npy)")
    click.echo(f"  quality check {'passed' if summary['quality_passed'] else 'FAILED'}: {out}/quality.json")
    for group, parts in summary.get("prompts", {}).items():
        direction, colour = parts["direction"], parts["colour"]
        click.echo(f"  prompts, {group} pairings: {direction['matched']} of {direction['scored']} drift the way they "
                   f"say, {colour['matched']} of {colour['scored']} have the sky colour they name")
