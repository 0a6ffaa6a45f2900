"""`latte cache`: encode an ingest manifest's videos (or a curate folder's clips) with the VAE into latent shards."""
import logging

import click

from latte_toolkit.pipelines.config import CACHE_KEYS, run_cache_job

from . import configured, key_option, main, setup_mindspore


@main.command()
@configured(
    CACHE_KEYS,
    key_option("manifest", type=click.Path()),
    key_option("vae", type=click.Path(file_okay=False)),
    key_option("out", "--out", "--cache_folder", type=click.Path(file_okay=False)),
    key_option("format", "--format", "--cache_file_type"),
    key_option("image_size", "--image-size", "--image_size"),
    key_option("dtype"),
    key_option("store"),
    key_option("workers"),
    key_option("scheduler"),
    key_option("micro_batch"),
    key_option("shard_videos"),
    key_option("chunk_frames"),
    key_option("skip_videos", "--resume_cache_index",
               help="The seed's manual resume: skip the first N manifest videos. Not needed here: re-running "
                    "resumes from the ledger."),
    key_option("seed"),
    key_option("text_encoder", type=click.Path(file_okay=False)),
    key_option("break_lock", "--break-lock", is_flag=True,
               help="On an object store: take over the lock of a job that stopped (no heartbeat for 60 s)."),
)
def cache(config):
    """Encode every video of an ingest manifest, or every clip of a curate folder (each a cache video of
    its clip id), with the VAE into latent shards.

    Re-running the same command resumes: shards already in CACHE/ledger.jsonl are skipped. The resolved
    config is saved as CACHE/config.resolved.json when the job finishes.

    \b
    Example:
      latte cache --manifest work/ingest --vae sd-vae-ft-mse/ --out work/cache --format mindrecord
      latte cache -c cache.yaml --cache_folder work/cache --cache_file_type numpy
      latte cache --manifest work/ingest --vae sd-vae-ft-mse/ --out work/cache --text-encoder clip-vit-large-patch14/
      latte cache --manifest work/curate --vae sd-vae-ft-mse/ --out work/cache    # the clips of `latte curate`
    """
    if config["skip_videos"]:
        logging.getLogger(__name__).warning("--resume_cache_index %d: skipping the first %d manifest videos "
                                            "(resume from the ledger needs no index)", config["skip_videos"],
                                            config["skip_videos"])
    setup_mindspore("CPU")
    summary = run_cache_job(config)
    click.echo(f"cache: {summary['videos']} videos, {summary['frames']} frames cached, {summary['failed']} failed; "
               f"{summary['shards_run']} shards run, {summary['shards_skipped']} already done; "
               f"{summary['seconds']} s ({summary['frames_per_s']} frames/s)")
    if "without_caption" in summary:
        click.echo(f"  caption embeddings: {summary['without_caption']} videos without a caption got the empty "
                   f"prompt's")
    if summary["shard_errors"]:
        click.echo(f"  shards that raised (re-run to retry): {', '.join(summary['shard_errors'])}")
    click.echo(f"  report: latte report {summary['out_dir']}")
    if summary["failed"] or summary["shard_errors"]:
        raise SystemExit(1)
