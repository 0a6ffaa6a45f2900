"""`latte ingest`: find videos, check they decode, write the manifest."""
import click

from latte_toolkit.pipelines.config import INGEST_KEYS, run_ingest_job

from . import configured, finish_job, key_option, main


@main.command()
@configured(
    INGEST_KEYS,
    key_option("sources", "--source", multiple=True, type=click.Path(),
               help="Folder (searched recursively for videos and frame folders), video file, or .csv/.json "
                    "list with a `video` column (and optional `caption`, `class`). Repeatable."),
    key_option("out", "--out", type=click.Path(file_okay=False), help="Output folder (resumable)."),
    key_option("num_frames", "--num-frames", "--num_frames"),
    key_option("sample_stride", "--sample-stride", "--sample_stride"),
    key_option("verify", "--verify/--no-verify", help="Decode every frame (default: container metadata and the "
                                                       "keyframes' sizes and pixel formats)."),
    key_option("workers"),
    key_option("scheduler"),
    key_option("retry_failed", "--retry-failed", is_flag=True, help="Also re-try the inputs that failed before."),
    key_option("decode_timeout", "--timeout"),
    key_option("unit_size"),
    key_option("break_lock", "--break-lock", is_flag=True,
               help="On an object store: take over the lock of a job that stopped (no heartbeat for 60 s)."),
)
def ingest(config):
    """Find videos, check they decode, and write DIR/manifest.parquet and DIR/failures.parquet.

    Re-running the same command resumes: units already in DIR/ledger.jsonl are skipped. The resolved
    config is saved as DIR/config.resolved.json when the job finishes.
    Exit code 0: every input usable; 1: some inputs failed (see the summary and failures.parquet).

    \b
    Example:
      latte ingest --source sky_train/ --out work/ingest --num-frames 16 --sample-stride 3 --workers 2
      latte ingest -c ingest.yaml --out work/ingest    # the seed's data_config: data_folder, sample_n_frames
    """
    summary = run_ingest_job(config)
    click.echo(f"ingest: {summary['ok']} usable, {summary['failed']} failed of {summary['inputs']} inputs; "
               f"{summary['frames']} frames; {summary['units_run']} units run, {summary['units_skipped']} "
               f"already done; {summary['seconds']} s ({summary['videos_per_s']} videos/s)")
    for category, count in sorted(summary["failed_by_category"].items()):
        click.echo(f"  failed, {category}: {count}")
    finish_job(summary, "manifest.parquet")
