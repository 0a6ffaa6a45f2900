"""`latte train`: train Latte from a latent cache (or from videos with a VAE), resumably."""
import json
import os

import click

from latte_toolkit.datasets.storage import is_url, open_store
from latte_toolkit.pipelines.config import INGEST_KEYS, run_ingest_job
from latte_toolkit.train.config import TRAIN_KEYS

from . import BadInput, configured, key_option, main


def _cache_keys(options):
    """--cache CACHE: data_folder and train_data_type (the format in its cache.json)."""
    cache_dir = options.pop("cache_dir")
    if cache_dir is None:
        return {}
    try:
        if is_url(cache_dir):  # read with the driver's own credentials (AWS_* variables, ~/.aws)
            return {"data_folder": cache_dir,
                    "train_data_type": open_store(cache_dir, None, "--cache").read_json("cache.json")["format"]}
        with open(os.path.join(cache_dir, "cache.json")) as handle:
            return {"data_folder": cache_dir, "train_data_type": json.load(handle)["format"]}
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"{cache_dir}: not a cache folder ({err})") from None


@main.command()
@configured(
    TRAIN_KEYS,
    key_option("output_path", "--output-dir", "--output_path", type=click.Path(file_okay=False),
               help="Run folder: config.json, train_log.jsonl, ckpt/, loss_curve.png."),
    key_option("max_steps", "--max-steps", "--max_steps", help="Stop after this many optimizer steps."),
    key_option("use_parallel", "--use_parallel", "--use-parallel",
               help="True: data-parallel over the processes msrun started."),
    key_option("device_target", "--device", help="Device [CPU]."),
    key_option("image_video_joint", "--image-video-joint", "--image_video_joint",
               help="True: image-video joint training (Latte + IMG), with --use-image-num images per clip."),
    key_option("use_image_num", "--use-image-num", "--use_image_num",
               help="Images per clip in joint training: each a random frame of another video, appended to "
                    "the clip; the loss covers all frames."),
    key_option("text_encoder", "--text-encoder", "--text_encoder", type=click.Path(file_okay=False),
               help="condition: text from videos: the CLIP text-encoder folder for the manifest's captions."),
    yaml="Training YAML (MindONE's key names; see `latte train --keys`).",
    overrides=_cache_keys,
)
@click.option("--cache", "cache_dir", type=str,
              help="Train from this cache folder (sets data_folder and train_data_type from its cache.json).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the run folder.")
def train(config, resume):
    """Train Latte from a latent cache (or from videos with a VAE), resumably.

    Writes OUTPUT/config.json (the resolved config), OUTPUT/train_log.jsonl (a line per step),
    checkpoints in OUTPUT/ckpt/step-N/ (training state, EMA weights for sampling, loader state),
    OUTPUT/loss_curve.png at the end, and with sample_interval OUTPUT/samples/step-N/ (videos of the run
    so far).

    \b
    Example:
      latte train -c configs/training/sky_numpy_video.yaml --cache work/cache --output-dir runs/sky
      msrun --worker_num=2 --local_worker_num=2 --join=True latte train -c ... --use_parallel True
      latte train -c configs/training/tiny_cpu_image_video.yaml --cache work/cache   # 8 frames + 4 images
      latte train -c configs/training/tiny_cpu_text.yaml --cache work/text-cache   # captions (latte cache --text-encoder)
    """
    # kept here: the training loop, its preflight and the sampler (MindSpore) add ~2.7 s to `latte --help`
    from latte_toolkit.inference.sample import sampler_for_training
    from latte_toolkit.train.loop import train as run_training
    from latte_toolkit.train.preflight import preflight
    try:
        checked = None
        if config["train_data_type"] == "video_file":
            checked = preflight(config, resume)  # before the raw videos are ingested into the run folder
            config["data_folder"] = _ingested(config)
        summary = run_training(config, resume=resume, checked=checked, sample=sampler_for_training(config))
    except FileNotFoundError as err:
        raise BadInput(str(err)) from None
    if summary["rank"] == 0:
        click.echo(f"train: {summary['steps']} steps; last checkpoint {summary['last_checkpoint']}; "
                   f"log {os.path.join(summary['output_path'], 'train_log.jsonl')}; curve {summary['loss_curve']}")


def _ingested(config):
    """A video data_folder holding no manifest is ingested into OUTPUT/ingest first (resumable)."""
    folder = config["data_folder"]
    if os.path.isfile(os.path.join(folder, "manifest.parquet")):
        return folder
    if os.path.isfile(os.path.join(folder, "cache.json")):
        raise BadInput(f"{folder} is a cache: set train_data_type to its format (or use --cache)")
    if config["use_parallel"]:
        raise BadInput(f"{folder}: run `latte ingest` first for a distributed run (data_folder must hold a manifest)")
    target = os.path.join(config["output_path"], "ingest")
    summary = run_ingest_job(INGEST_KEYS.load(None, {
        "sources": [folder], "out": target, "num_frames": config["num_frames"],
        "sample_stride": config["sample_stride"], "workers": 0}))
    if not summary["ok"]:
        raise BadInput(f"{folder}: no usable video for clips of {config['num_frames']} frames (see {target})")
    return target
