"""`latte curate`: cut ingested videos into clips, write clips.parquet and filtered.parquet."""
import click

from latte_toolkit.pipelines.config import CURATE_KEYS, run_curate_job

from . import configured, finish_job, key_option, main


@main.command()
@configured(
    CURATE_KEYS,
    key_option("manifest", "--manifest", type=click.Path(), help="Ingest output folder (or its manifest.parquet)."),
    key_option("out", "--out", type=click.Path(file_okay=False), help="Curate folder (resumable)."),
    key_option("min_clip_frames"),
    key_option("max_clip_frames"),
    key_option("trim_frames"),
    key_option("cut_threshold"),
    key_option("dissolve_threshold"),
    key_option("flash_frames"),
    key_option("min_motion"),
    key_option("max_motion"),
    key_option("min_size"),
    key_option("letterbox"),
    key_option("dedup_distance"),
    key_option("workers"),
    key_option("scheduler"),
    key_option("unit_size"),
    key_option("break_lock", "--break-lock", is_flag=True,
               help="On an object store: take over the lock of a job that stopped (no heartbeat for 60 s)."),
)
def curate(config):
    """Cut each ingested video into clips (frame ranges of its file; nothing is re-encoded) and write
    DIR/clips.parquet (the clips kept), DIR/filtered.parquet (those dropped, with the reason and the
    score that dropped them) and DIR/failures.parquet.

    Re-running the same command resumes: units already in DIR/ledger.jsonl are skipped. The resolved
    config is saved as DIR/config.resolved.json when the job finishes.
    Exit code 0: every video scanned; 1: some failed (see the summary and failures.parquet).

    \b
    Example:
      latte curate --manifest work/ingest --out work/curate --min-clip-frames 16 --max-clip-frames 256
    """
    summary = run_curate_job(config)
    click.echo(f"curate: {summary['videos']} videos, {summary['frames']} frames, {summary['cuts']} cuts -> "
               f"{summary['clips']} clips kept "
               f"({summary['clip_frames']} frames), {summary['filtered']} dropped, {summary['failed']} videos "
               f"failed; {summary['units_run']} units run, {summary['units_skipped']} already done; "
               f"{summary['seconds']} s ({summary['frames_per_s']} frames/s)")
    for reason, count in sorted(summary["filtered_by_reason"].items()):
        click.echo(f"  dropped, {reason}: {count}")
    finish_job(summary, "clips.parquet")
