"""The `latte` command line: `latte <stage> [options]`.

Exit codes: 0 all done, 1 finished with failed inputs, 2 bad usage or bad input.
"""
import json
import logging
import os

import click

from latte_core.samplers import SAMPLERS


# numeric options are range-checked by click: a bad value is one "Error: Invalid value for '--x'" line, exit 2
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)


class BadInput(click.ClickException):
    """A user error (bad file, bad option value): one line on stderr, exit code 2."""
    exit_code = 2


class LatteGroup(click.Group):
    """The one error rule of every command: a UserError (bad input, key or value) is one `Error:` line and
    exit 2; a JobAborted (e.g. a full disk; committed units stay valid) one `Error:` line and exit 1; any
    other exception one `Error:` line and exit 1, its traceback only with `latte -v`."""

    def invoke(self, ctx):
        from latte_core.errors import JobAborted, UserError
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except UserError as err:
            _fail(err, 2)
        except JobAborted as err:
            _fail(err, 1)
        except Exception as err:
            if (ctx.obj or {}).get("verbose"):
                raise
            _fail(f"unexpected {type(err).__name__}: {err} (run `latte -v ...` for the traceback)", 1)


def _fail(message, code):
    text = " ".join(str(message).split()) or "failed"
    click.echo(f"Error: {text}", err=True)
    raise SystemExit(code)


def setup_mindspore(device, mode="graph"):
    import mindspore as ms
    from latte_core.runtime import prefer_avx2_onednn
    prefer_avx2_onednn()
    ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


@click.group(cls=LatteGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages, and show the traceback of an unexpected error.")
@click.pass_context
def main(ctx, verbose):
    """Latte toolkit: ingest videos, cache VAE latents, train and sample Latte on MindSpore.

    \b
    Example:
      latte ingest --source sky_train/ --out work/ingest --num-frames 16 --sample-stride 3
      latte cache --manifest work/ingest --vae sd-vae-ft-mse/ --out work/cache --format mindrecord
      latte report work/cache --verify
      latte convert latte --source skytimelapse.pt --target skytimelapse.ckpt
      latte bench step --model Latte-S/2 --frames 8 --latent 16 --batch 2
    """
    # MindSpore's C++ warnings are noise for users; set before mindspore is first imported.
    os.environ.setdefault("GLOG_v", "3")
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------------- ingest
INGEST_FIELDS = {"sources": (list, str), "out": str, "num_frames": int, "sample_stride": int, "verify": bool,
                 "workers": int, "scheduler": str, "decode_timeout": (int, float), "unit_size": int}
INGEST_ALIASES = {"data_folder": "sources", "csv_path": "sources", "data_path": "sources",
                  "sample_n_frames": "num_frames"}


@main.command()
@click.option("--source", "sources", multiple=True, type=click.Path(),
              help="Folder (searched recursively for videos and frame folders), video file, or .csv/.json "
                   "list with a `video` column (and optional `caption`, `class`). Repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML with any of: " + ", ".join(sorted(set(INGEST_FIELDS) | set(INGEST_ALIASES))))
@click.option("--num-frames", "--num_frames", "num_frames", type=POSITIVE_INT, help="Clip length; shorter inputs fail as too short.")
@click.option("--sample-stride", "--sample_stride", "sample_stride", type=POSITIVE_INT, help="Frame stride of a clip [1].")
@click.option("--verify/--no-verify", default=None, help="Decode every frame (default: container metadata only).")
@click.option("--workers", type=NON_NEGATIVE_INT, help="Local dask worker processes [1]; 0 runs in this process.")
@click.option("--scheduler", help="Address of an existing dask scheduler, e.g. tcp://10.0.0.1:8786.")
@click.option("--retry-failed", is_flag=True, help="Also re-try the inputs that failed before.")
@click.option("--timeout", "decode_timeout", type=POSITIVE_SECONDS, help="Seconds before a hung decode is killed [60].")
@click.option("--unit-size", type=POSITIVE_INT, help="Inputs per unit of work [32].")
def ingest(sources, out_dir, config_path, num_frames, sample_stride, verify, workers, scheduler, retry_failed,
           decode_timeout, unit_size):
    """Find videos, check they decode, and write DIR/manifest.parquet and DIR/failures.parquet.

    Re-running the same command resumes: units already in DIR/ledger.jsonl are skipped.
    Exit code 0: every input usable; 1: some inputs failed (see the summary and failures.parquet).

    \b
    Example:
      latte ingest --source sky_train/ --out work/ingest --num-frames 16 --sample-stride 3 --workers 2
    """
    from latte_toolkit.pipelines.config import ConfigError, load_stage_config
    from latte_toolkit.pipelines.ingest import IngestError, run_ingest
    settings = {"sources": [], "out": None, "num_frames": None, "sample_stride": 1, "verify": False, "workers": 1,
                "scheduler": None, "decode_timeout": 60.0, "unit_size": 32}
    if config_path:
        try:
            loaded = load_stage_config(config_path, INGEST_FIELDS, INGEST_ALIASES)
        except ConfigError as err:
            raise BadInput(str(err)) from None
        if isinstance(loaded.get("sources"), str):
            loaded["sources"] = [loaded["sources"]]
        settings.update({k: v for k, v in loaded.items() if v is not None})
    overrides = {"out": out_dir, "num_frames": num_frames, "sample_stride": sample_stride, "verify": verify,
                 "workers": workers, "scheduler": scheduler, "decode_timeout": decode_timeout, "unit_size": unit_size}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if sources:
        settings["sources"] = list(sources)
    if not settings["out"]:
        raise BadInput("give --out (or `out:` in the config)")
    try:
        summary = run_ingest(settings["sources"], settings["out"], settings["num_frames"], settings["sample_stride"],
                             settings["verify"], settings["workers"], settings["scheduler"], retry_failed,
                             settings["decode_timeout"], settings["unit_size"])
    except IngestError as err:
        raise BadInput(str(err)) from None
    _print_ingest_summary(summary)
    if summary["failed"] or summary["unit_errors"]:
        raise SystemExit(1)


def _print_ingest_summary(summary):
    click.echo(f"ingest: {summary['ok']} usable, {summary['failed']} failed of {summary['inputs']} inputs; "
               f"{summary['frames']} frames; {summary['units_run']} units run, {summary['units_skipped']} "
               f"already done; {summary['seconds']} s ({summary['videos_per_s']} videos/s)")
    for category, count in sorted(summary["failed_by_category"].items()):
        click.echo(f"  failed, {category}: {count}")
    if summary["unit_errors"]:
        click.echo(f"  units that raised (re-run to retry): {', '.join(summary['unit_errors'])}")
    click.echo(f"  manifest: {os.path.join(summary['out_dir'], 'manifest.parquet')}")
    if summary["failed"]:
        click.echo(f"  failures: {os.path.join(summary['out_dir'], 'failures.parquet')}")


# ---------------------------------------------------------------------------------------- cache
CACHE_FIELDS = {"manifest": str, "vae": str, "out": str, "format": str, "image_size": int, "dtype": str,
                "store": str, "workers": int, "scheduler": str, "micro_batch": int, "shard_videos": int,
                "chunk_frames": int, "seed": int}
CACHE_ALIASES = {"cache_folder": "out", "cache_file_type": "format", "vae_path": "vae", "sample_size": "image_size"}


@main.command()
@click.option("--manifest", type=click.Path(), help="Ingest output folder (or its manifest.parquet).")
@click.option("--vae", "vae", type=click.Path(file_okay=False), help="diffusers AutoencoderKL folder.")
@click.option("--out", "--cache_folder", "out", type=click.Path(file_okay=False), help="Cache folder (resumable).")
@click.option("--format", "--cache_file_type", "fmt", type=click.Choice(["numpy", "mindrecord", "parquet"]),
              help="Shard format [numpy].")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML with any of: " + ", ".join(sorted(set(CACHE_FIELDS) | set(CACHE_ALIASES))))
@click.option("--image-size", "--image_size", "image_size", type=POSITIVE_INT, help="Frame size after crop+resize [256].")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), help="Stored dtype [float16].")
@click.option("--store", type=click.Choice(["posterior", "sample"]),
              help="posterior: mean and std per frame (a fresh sample each epoch) [default]; sample: one fixed draw.")
@click.option("--workers", type=NON_NEGATIVE_INT, help="Local dask worker processes, one VAE each [1]; 0 runs in this process.")
@click.option("--scheduler", help="Address of an existing dask scheduler.")
@click.option("--micro-batch", type=POSITIVE_INT, help="Frames per VAE call [8].")
@click.option("--shard-videos", type=POSITIVE_INT, help="Videos per shard, the unit of work and of resume [16].")
@click.option("--chunk-frames", type=POSITIVE_INT, help="Frames per MindRecord record / Parquet row [16].")
@click.option("--resume_cache_index", "skip_videos", type=NON_NEGATIVE_INT, default=0,
              help="The seed's manual resume: skip the first N manifest videos. Not needed here: re-running "
                   "resumes from the ledger.")
def cache(manifest, vae, out, fmt, config_path, image_size, dtype, store, workers, scheduler, micro_batch,
          shard_videos, chunk_frames, skip_videos):
    """Encode every video of an ingest manifest with the VAE into latent shards.

    Re-running the same command resumes: shards already in CACHE/ledger.jsonl are skipped.

    \b
    Example:
      latte cache --manifest work/ingest --vae sd-vae-ft-mse/ --out work/cache --format mindrecord
    """
    from latte_toolkit.pipelines.cache import CacheError, run_cache
    from latte_toolkit.pipelines.config import ConfigError, load_stage_config
    settings = {"manifest": None, "vae": None, "out": None, "format": "numpy", "image_size": 256, "dtype": "float16",
                "store": "posterior", "workers": 1, "scheduler": None, "micro_batch": 8, "shard_videos": 16,
                "chunk_frames": 16, "seed": 0}
    if config_path:
        try:
            settings.update({k: v for k, v in load_stage_config(config_path, CACHE_FIELDS, CACHE_ALIASES).items()
                             if v is not None})
        except ConfigError as err:
            raise BadInput(str(err)) from None
    overrides = {"manifest": manifest, "vae": vae, "out": out, "format": fmt, "image_size": image_size, "dtype": dtype,
                 "store": store, "workers": workers, "scheduler": scheduler, "micro_batch": micro_batch,
                 "shard_videos": shard_videos, "chunk_frames": chunk_frames}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("manifest", "vae", "out"):
        if not settings[key]:
            raise BadInput(f"give --{key} (or `{key}:` in the config)")
    if skip_videos:
        logging.getLogger(__name__).warning("--resume_cache_index %d: skipping the first %d manifest videos "
                                            "(resume from the ledger needs no index)", skip_videos, skip_videos)
    setup_mindspore("CPU")
    try:
        summary = run_cache(settings["manifest"], settings["vae"], settings["out"], settings["format"],
                            settings["image_size"], settings["dtype"], settings["store"], settings["workers"],
                            settings["scheduler"], settings["micro_batch"], settings["shard_videos"],
                            settings["chunk_frames"], skip_videos, settings["seed"])
    except CacheError as err:
        raise BadInput(str(err)) from None
    click.echo(f"cache: {summary['videos']} videos, {summary['frames']} frames cached, {summary['failed']} failed; "
               f"{summary['shards_run']} shards run, {summary['shards_skipped']} already done; "
               f"{summary['seconds']} s ({summary['frames_per_s']} frames/s)")
    if summary["shard_errors"]:
        click.echo(f"  shards that raised (re-run to retry): {', '.join(summary['shard_errors'])}")
    click.echo(f"  report: latte report {summary['out_dir']}")
    if summary["failed"] or summary["shard_errors"]:
        raise SystemExit(1)


@main.command()
@click.argument("cache_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--verify", is_flag=True, help="Re-hash every shard and compare with the ledger (exit 1 on a mismatch).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw each shard's seconds per phase (decode, encode, write) into this PNG.")
def report(cache_dir, as_json, verify, plot_path):
    """Summarise a cache: videos, frames, bytes, size ratio to the sources, failures, time per phase.

    \b
    Example:
      latte report work/cache --verify --plot work/cache_phases.png
    """
    from latte_toolkit.pipelines.report import cache_report, plot_cache_phases
    try:
        result = cache_report(cache_dir, verify)
    except FileNotFoundError as err:
        raise BadInput(str(err)) from None
    if plot_path:
        result["plot"] = plot_cache_phases(cache_dir, plot_path)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{result['cache']} ({result['format']}, {result['store']}, {result['dtype']}, "
                   f"{result['image_size']}px){'' if result['finished'] else ' — not finished'}")
        click.echo(f"  {result['videos']} videos, {result['frames']} frames in {result['shards']} shards, "
                   f"{result['bytes'] / 1e6:.1f} MB ({result['cache_to_source_bytes']} x the sources)")
        click.echo(f"  failed: {result['failed']} {result['failed_by_category'] or ''}")
        click.echo("  seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds_by_phase"].items()))
        if verify:
            click.echo(f"  verified shards: {result['verified_shards']}")
            for line in result["corrupt_shards"]:
                click.echo(f"  CORRUPT {line}")
        if plot_path:
            click.echo(f"  plot: {plot_path}")
    if verify and result["corrupt_shards"]:
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------- train
def _parse_bool(value):
    if value is None:
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadInput(f"expected True or False, got {value!r}")


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Training YAML (MindONE's key names; see `latte train --keys`).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Train from this cache folder (sets data_folder and train_data_type from its cache.json).")
@click.option("--output-dir", "--output_path", "output_path", type=click.Path(file_okay=False),
              help="Run folder: config.json, train_log.jsonl, ckpt/, loss_curve.png.")
@click.option("--max-steps", "--max_steps", "max_steps", type=NON_NEGATIVE_INT, help="Stop after this many optimizer steps.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the run folder.")
@click.option("--use_parallel", "--use-parallel", "use_parallel", default=None,
              help="True: data-parallel over the processes msrun started.")
@click.option("--device", "device_target", type=click.Choice(["CPU", "GPU", "Ascend"]), help="Device [CPU].")
@click.option("--keys", "show_keys", is_flag=True, help="List every config key with its default and exit.")
def train(config_path, cache_dir, output_path, max_steps, resume, use_parallel, device_target, show_keys):
    """Train Latte from a latent cache (or from videos with a VAE), resumably.

    Writes OUTPUT/train_log.jsonl (a line per step), checkpoints in OUTPUT/ckpt/step-N/ (training
    state, EMA weights for sampling, loader state) and OUTPUT/loss_curve.png at the end.

    \b
    Example:
      latte train -c configs/training/sky_numpy_video.yaml --cache work/cache --output-dir runs/sky
      msrun --worker_num=2 --local_worker_num=2 --join=True latte train -c ... --use_parallel True
    """
    from latte_toolkit.train.config import TRAIN_KEYS, TrainConfigError, load_train_config
    from latte_toolkit.train.checkpoint import ResumeError
    from latte_toolkit.pipelines.ingest import IngestError
    from latte_toolkit.train.loop import TrainingError, preflight, train as run_training
    if show_keys:
        click.echo(TRAIN_KEYS.describe())
        return
    overrides = {"output_path": output_path, "max_steps": max_steps, "use_parallel": _parse_bool(use_parallel),
                 "device_target": device_target}
    if cache_dir is not None:
        try:
            with open(os.path.join(cache_dir, "cache.json")) as handle:
                overrides.update(data_folder=cache_dir, train_data_type=json.load(handle)["format"])
        except (OSError, ValueError, KeyError) as err:
            raise BadInput(f"{cache_dir}: not a cache folder ({err})") from None
    try:
        config = load_train_config(config_path, overrides)
        if config["train_data_type"] == "video_file":
            preflight(config, resume)  # before the raw videos are ingested into the run folder
            config["data_folder"] = _ingested(config)
        summary = run_training(config, resume=resume)
    except (TrainConfigError, TrainingError, ResumeError, IngestError, FileNotFoundError) as err:
        raise BadInput(str(err)) from None
    if summary["rank"] == 0:
        click.echo(f"train: {summary['steps']} steps; last checkpoint {summary['last_checkpoint']}; "
                   f"log {os.path.join(summary['output_path'], 'train_log.jsonl')}; curve {summary['loss_curve']}")


def _ingested(config):
    """A video data_folder holding no manifest is ingested into OUTPUT/ingest first (resumable)."""
    from latte_toolkit.pipelines.ingest import run_ingest
    folder = config["data_folder"]
    if os.path.isfile(os.path.join(folder, "manifest.parquet")):
        return folder
    if os.path.isfile(os.path.join(folder, "cache.json")):
        raise BadInput(f"{folder} is a cache: set train_data_type to its format (or use --cache)")
    if config["use_parallel"]:
        raise BadInput(f"{folder}: run `latte ingest` first for a distributed run (data_folder must hold a manifest)")
    target = os.path.join(config["output_path"], "ingest")
    summary = run_ingest([folder], target, config["num_frames"], config["sample_stride"], workers=0)
    if not summary["ok"]:
        raise BadInput(f"{folder}: no usable video for clips of {config['num_frames']} frames (see {target})")
    return target


@main.command("train-vae")
@click.option("--manifest", required=True, type=click.Path(exists=True), help="Ingest folder whose frames to learn.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="New diffusers VAE folder.")
@click.option("--image-size", default=64, show_default=True, type=POSITIVE_INT, help="Frame size (crop rule).")
@click.option("--block-out-channels", default="32,64,64", show_default=True,
              help="Channels per level; n levels downsample by 2^(n-1).")
@click.option("--layers-per-block", default=1, show_default=True, type=POSITIVE_INT)
@click.option("--norm-groups", default=16, show_default=True, type=POSITIVE_INT, help="GroupNorm groups.")
@click.option("--latent-channels", default=4, show_default=True, type=POSITIVE_INT)
@click.option("--steps", default=2000, show_default=True, type=POSITIVE_INT)
@click.option("--batch", default=16, show_default=True, type=POSITIVE_INT, help="Frames per step.")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Learning rate (after 100 warm-up steps).")
@click.option("--kl-weight", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=False), help="Weight of the KL term (per latent element).")
@click.option("--seed", default=0, show_default=True)
def train_vae_command(manifest, out_dir, image_size, block_out_channels, layers_per_block, norm_groups,
                      latent_channels, steps, batch, lr, kl_weight, seed):
    """Train a small AutoencoderKL (L1 reconstruction + KL) on a manifest's frames.

    Writes a diffusers folder (config.json with the measured scaling_factor, safetensors) with
    train_vae_log.jsonl, loss_curve.png and train_vae_summary.json beside it.

    \b
    Example:
      latte train-vae --manifest work/ingest --out models/vae-clouds --image-size 64 --steps 2000
    """
    setup_mindspore("CPU")
    from latte_toolkit.train.vae import train_vae
    try:
        channels = tuple(int(c) for c in block_out_channels.split(","))
        summary = train_vae(manifest, out_dir, image_size, channels, layers_per_block, norm_groups,
                            latent_channels, steps, batch, lr, kl_weight, seed)
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as err:
        raise BadInput(str(err)) from None
    click.echo(json.dumps(summary))


# ---------------------------------------------------------------------------------------- sample
@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Inference YAML (MindONE's keys; `latte sample --keys`). Default: the shipped cloud model.")
@click.option("--checkpoint", help="Latte weights (.pt/.ckpt/.safetensors) or a run's ckpt/step-N folder.")
@click.option("--vae", "vae_checkpoint", help="VAE: diffusers folder or .ckpt.")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)),
              help="Sampler [ddpm; ddim with the config's ddim_sampling: true]; wins over ddim_sampling.")
@click.option("--steps", "sampling_steps", type=POSITIVE_INT,
              help="Sampling steps [the sampler's: " + ", ".join(f"{n} {s.default_steps}" for n, s in SAMPLERS.items()) + "].")
@click.option("--eta", "ddim_eta", type=click.FloatRange(min=0), help="DDIM eta [0].")
@click.option("--cfg-scale", "guidance_scale", type=float, help="Classifier-free guidance scale (class models).")
@click.option("--class-labels", help="Comma-separated classes, one per video (cycled).")
@click.option("--seed", type=int, help="Noise seed [42].")
@click.option("--num-videos", type=POSITIVE_INT, help="Videos to make [4].")
@click.option("--batch-size", type=POSITIVE_INT, help="Videos sampled together [4].")
@click.option("--output-dir", "output_path", type=click.Path(file_okay=False), help="Output folder [samples].")
@click.option("--device", "device_target", type=click.Choice(["CPU", "GPU", "Ascend"]), help="Device [CPU].")
@click.option("--keys", "show_keys", is_flag=True, help="List every config key with its default and exit.")
def sample(config_path, checkpoint, vae_checkpoint, sampler, sampling_steps, ddim_eta, guidance_scale, class_labels,
           seed, num_videos, batch_size, output_path, device_target, show_keys):
    """Sample videos: DDPM (250 steps), DDIM or DPM-Solver++ (20 steps); GIF + MP4 + latents (.npy) per video.

    \b
    Examples:
      latte sample                                   # the shipped cloud model, no downloads
      latte sample -c configs/inference/sky.yaml     # the converted official Sky Timelapse Latte-XL/2
      latte sample --checkpoint runs/sky/ckpt/step-00001000 --sampler ddim --steps 50
      latte sample --sampler dpm-solver++ --steps 20
    """
    from latte_toolkit.pipelines.sample import SAMPLE_KEYS, SampleError, run_sample, summary_table
    if show_keys:
        click.echo(SAMPLE_KEYS.describe())
        return
    labels = None
    if class_labels:
        try:
            labels = [int(label) for label in class_labels.split(",")]
        except ValueError:
            raise BadInput(f"--class-labels must be integers separated by commas, got {class_labels!r}") from None
    overrides = {"checkpoint": checkpoint, "vae_checkpoint": vae_checkpoint, "sampling_steps": sampling_steps,
                 "sampler": sampler, "ddim_eta": ddim_eta,
                 "guidance_scale": guidance_scale, "class_labels": labels, "seed": seed, "num_videos": num_videos,
                 "batch_size": batch_size, "output_path": output_path, "device_target": device_target}
    try:
        config = SAMPLE_KEYS.load(config_path, overrides)
        setup_mindspore(config["device_target"])
        summary = run_sample(config)
    except SampleError as err:
        raise BadInput(str(err)) from None
    click.echo(summary_table(summary))
    click.echo(f"{summary['videos']} videos in {summary['output_path']}")


@main.command()
@click.argument("samples_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--manifest", required=True, type=click.Path(exists=True), help="Ingest folder of the training videos.")
@click.option("--vae", "vae_checkpoint", required=True, help="The VAE the model was trained with.")
@click.option("--real-clips", default=64, show_default=True, type=POSITIVE_INT, help="Real clips to compare with.")
def quality(samples_dir, manifest, vae_checkpoint, real_clips):
    """Check sampled videos against the training videos and two baselines (exit 1 if it fails).

    Appearance: Fréchet distance of per-frame VAE-latent features to real clips, against decoded
    noise. Motion: frame-to-frame change within the real clips' range, while real frames shuffled
    in time fall outside it.

    \b
    Example:
      latte quality samples/ --manifest work/ingest --vae models/vae-clouds
    """
    from latte_toolkit.pipelines.quality import check_samples, read_sample_gifs
    from latte_core.vae import load_vae
    from latte_toolkit.pipelines.sample import SampleError
    setup_mindspore("CPU")
    try:
        result = check_samples(read_sample_gifs(samples_dir), manifest, load_vae(vae_checkpoint), real_clips)
    except (SampleError, FileNotFoundError, ValueError) as err:
        raise BadInput(str(err)) from None
    click.echo(json.dumps(result))
    if not result["passed"]:
        raise SystemExit(1)


@main.command()
@click.option("--out", "out_dir", default="latte-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo makes (re-running resumes).")
@click.option("--videos", default=48, show_default=True, type=POSITIVE_INT, help="Procedural cloud clips to generate.")
@click.option("--train-steps", default=200, show_default=True, type=NON_NEGATIVE_INT, help="Training steps from the shipped Latte.")
@click.option("--sample-steps", default=250, show_default=True, type=POSITIVE_INT, help="DDPM steps.")
@click.option("--num-videos", default=4, show_default=True, type=POSITIVE_INT, help="Videos to sample.")
def demo(out_dir, videos, train_steps, sample_steps, num_videos):
    """The whole pipeline on procedural videos, no downloads: generate → ingest → cache → train → sample.

    \b
    Example:
      latte demo --out latte-demo
    """
    from latte_toolkit.pipelines.demo import run_demo
    setup_mindspore("CPU")
    summary = run_demo(out_dir, videos, train_steps, sample_steps, num_videos)
    out = summary["out"]
    click.echo(f"demo finished in {summary['total_seconds']} s ({summary['seconds']}):")
    click.echo(f"  {summary['videos']} videos: {out}/videos, manifest {out}/ingest/manifest.parquet")
    click.echo(f"  cache: {out}/cache ({summary['cached_frames']} frames), report {out}/cache_report.json")
    click.echo(f"  training: {summary['train_steps']} steps, loss curve {summary['loss_curve']}")
    click.echo(f"  samples: {', '.join(summary['samples'])}")
    click.echo(f"  quality check {'passed' if summary['quality_passed'] else 'FAILED'}: {out}/quality.json")


# ---------------------------------------------------------------------------------------- convert
@main.group()
def convert():
    """Convert official checkpoints into MindSpore files."""


@convert.command("latte")
@click.option("--source", required=True, type=click.Path(dir_okay=False),
              help="Official Latte checkpoint: .pt/.pth/.bin (read without torch), .safetensors or .ckpt.")
@click.option("--target", required=True, type=click.Path(dir_okay=False),
              help="Output file: .ckpt (MindSpore) or .safetensors.")
@click.option("--model", "model_name", default=None,
              help="Check the weights are this variant (e.g. Latte-XL/2); read off the weights otherwise.")
def convert_latte_command(source, target, model_name):
    """Convert an official Latte checkpoint (a state dict, or a training dict: "ema" preferred).

    \b
    Example:
      latte convert latte --source models/skytimelapse.pt --target models/skytimelapse.ckpt
    """
    from latte_core.checkpoint import CheckpointError
    from latte_core.convert import convert_latte
    try:
        config = convert_latte(source, target, model_name)
    except CheckpointError as err:
        raise BadInput(str(err)) from None
    click.echo(json.dumps({"target": target, "architecture": config}))


@convert.command("vae")
@click.option("--source", required=True, type=click.Path(),
              help="A diffusers folder (config.json + diffusion_pytorch_model.safetensors/.bin) or one "
                   "weights file in the diffusers or original LDM layout (first_stage_model. prefix allowed).")
@click.option("--target", required=True, type=click.Path(dir_okay=False),
              help="Output file: .ckpt (MindSpore) or .safetensors.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="diffusers config.json for a single weights file; otherwise the architecture is read "
                   "off the weights, with 32 norm groups as in every published SD VAE.")
def convert_vae_command(source, target, config_path):
    """Convert a Stable Diffusion VAE (e.g. sd-vae-ft-mse) to a MindSpore file with diffusers names.

    \b
    Example:
      latte convert vae --source sd-vae-ft-mse/ --target models/sd-vae-ft-mse.ckpt
    """
    from latte_core.checkpoint import CheckpointError
    from latte_core.convert import convert_vae
    config = None
    if config_path is not None:
        try:
            with open(config_path) as handle:
                config = json.load(handle)
        except (OSError, ValueError) as err:
            raise BadInput(f"{config_path}: unreadable config ({err})") from None
    try:
        result = convert_vae(source, target, config)
    except CheckpointError as err:
        raise BadInput(str(err)) from None
    click.echo(json.dumps({"target": target, "config": result}))


# ---------------------------------------------------------------------------------------- bench
@main.group()
def bench():
    """Speed and memory benchmarks; each prints one JSON line."""


KERNELS_OPTION = click.option(
    "--kernels", default="both", show_default=True, type=click.Choice(["on", "off", "both"]),
    help="latte_core's CPU kernels (on), MindSpore's own ops (off), or both paths in one run.")


def _kernel_paths(choice):
    return ("on", "off") if choice == "both" else (choice,)


@bench.command("step")
@click.option("--model", "model_name", default="Latte-S/2", show_default=True, help="Latte variant.")
@click.option("--frames", default=8, show_default=True, type=POSITIVE_INT, help="Frames per clip.")
@click.option("--latent", default=16, show_default=True, type=POSITIVE_INT, help="Latent height and width.")
@click.option("--batch", default=2, show_default=True, type=POSITIVE_INT, help="Clips per step.")
@click.option("--steps", default=5, show_default=True, type=POSITIVE_INT, help="Steps to run; the first (compile) is reported apart.")
@click.option("--flash-attention/--no-flash-attention", default=False, show_default=True,
              help="Use the flash attention backend (fused on Ascend, block-wise elsewhere).")
@click.option("--device", default="CPU", show_default=True, type=click.Choice(["CPU", "GPU", "Ascend"]))
@KERNELS_OPTION
def bench_step_command(model_name, frames, latent, batch, steps, flash_attention, device, kernels):
    """Time a training step (forward + diffusion loss + backward + AdamW) in graph mode.

    Each kernel path runs in a fresh process. The top-level figures are the first path's (kernels
    on); `kernels_off` holds the other, `kernels_speedup` their ratio, and `matmul` the dense layers'
    GFLOP/s inside the step against numpy's BLAS on the same matmul shapes.

    \b
    Example:
      latte bench step --model Latte-S/2 --frames 8 --latent 16 --batch 2 --steps 5
    """
    from latte_core import LATTE_MODELS
    from latte_toolkit.train.bench import bench_step
    if model_name not in LATTE_MODELS:
        raise BadInput(f"unknown Latte variant {model_name!r}; choose one of {', '.join(LATTE_MODELS)}")
    if steps < 2:
        raise BadInput("--steps must be at least 2 (the first step includes graph compilation)")
    click.echo(json.dumps(bench_step(model_name, frames, latent, batch, steps, flash_attention, device=device,
                                     kernels=_kernel_paths(kernels))))


@bench.command("vae")
@click.option("--size", default=256, show_default=True, type=POSITIVE_INT, help="Frame height and width.")
@click.option("--batch", default=4, show_default=True, type=POSITIVE_INT, help="Frames per encoder call.")
@click.option("--repeats", default=3, show_default=True, type=POSITIVE_INT, help="Timed encoder calls after the compiling one.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16"]),
              help="Compute dtype of convolutions and projections.")
@click.option("--device", default="CPU", show_default=True, type=click.Choice(["CPU", "GPU", "Ascend"]))
@KERNELS_OPTION
def bench_vae_command(size, batch, repeats, dtype, device, kernels):
    """Encoding speed of the full sd-vae-ft-mse architecture (random weights), graph mode.

    Each kernel path runs in a fresh process; the top-level figures are the first path's.

    \b
    Example:
      latte bench vae --size 256 --batch 4
    """
    from latte_toolkit.train.bench import bench_vae
    if size % 8 or size <= 0:
        raise BadInput(f"--size must be a positive multiple of 8, got {size}")
    click.echo(json.dumps(bench_vae(size, batch, repeats, dtype, device=device, kernels=_kernel_paths(kernels))))


@bench.command("ingest")
@click.option("--source", "sources", multiple=True, required=True, type=click.Path(exists=True),
              help="Inputs to ingest (as for `latte ingest`). Repeatable.")
@click.option("--workers", default=0, show_default=True, type=NON_NEGATIVE_INT,
              help="Ingest workers (0: in this process, one decode child, i.e. one core).")
@click.option("--replan-inputs", default=10000, show_default=True, type=NON_NEGATIVE_INT,
              help="Also time re-planning a finished run over this many synthetic inputs (0: skip).")
def bench_ingest_command(sources, workers, replan_inputs):
    """`ingest --verify` against a plain sequential decord/PIL decode of the same files, in one run.

    \b
    Example:
      latte bench ingest --source sky_train/
    """
    from latte_toolkit.pipelines.bench import bench_ingest
    click.echo(json.dumps(bench_ingest(list(sources), workers, replan_inputs)))


@bench.command("cache")
@click.option("--format", "fmt", default="numpy", show_default=True, type=click.Choice(["numpy", "mindrecord", "parquet"]))
@click.option("--vae", "vae_dir", type=click.Path(file_okay=False),
              help="diffusers VAE folder [a random-weight VAE of sd-vae-ft-mse's architecture].")
@click.option("--videos", default=2, show_default=True, type=POSITIVE_INT, help="Synthetic H.264 clips to cache.")
@click.option("--frames", default=16, show_default=True, type=POSITIVE_INT, help="Frames per clip.")
@click.option("--size", default=256, show_default=True, type=POSITIVE_INT, help="Cached frame size.")
@click.option("--micro-batch", default=8, show_default=True, type=POSITIVE_INT, help="Frames per VAE call.")
def bench_cache_command(fmt, vae_dir, videos, frames, size, micro_batch):
    """End-to-end cache frames/s against encode-only frames/s of the same VAE on the same frames.

    \b
    Example:
      latte bench cache --format mindrecord
    """
    from latte_toolkit.pipelines.bench import bench_cache
    setup_mindspore("CPU")
    click.echo(json.dumps(bench_cache(fmt, vae_dir, videos, frames, size, micro_batch)))


@bench.command("loader")
@click.argument("cache_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--synthetic-gb", default=1.0, show_default=True,
              help="Without CACHE_DIR: size of a synthetic cache of random latents written first.")
@click.option("--format", "fmt", default="numpy", show_default=True, type=click.Choice(["numpy", "mindrecord", "parquet"]),
              help="Format of the synthetic cache.")
@click.option("--batch", default=4, show_default=True, type=POSITIVE_INT, help="Clips per batch.")
@click.option("--num-frames", default=16, show_default=True, type=POSITIVE_INT, help="Frames per clip.")
@click.option("--sample-stride", default=1, show_default=True, type=POSITIVE_INT, help="Frame stride within a clip.")
@click.option("--workers", default=2, show_default=True, type=POSITIVE_INT, help="Loader num_parallel_workers.")
@click.option("--max-batches", default=0, show_default=True, type=NON_NEGATIVE_INT, help="Stop after this many batches (0: one epoch).")
@click.option("--check", default="full", show_default=True, type=click.Choice(["full", "size"]),
              help="Shard check when the loader starts (sha256 or sizes against the ledger).")
@click.option("--posterior", default="sample", show_default=True, type=click.Choice(["sample", "mean"]),
              help="Latents drawn from the cached posterior, or its mean (reads only the mean).")
def bench_loader_command(cache_dir, synthetic_gb, fmt, batch, num_frames, sample_stride, workers, max_batches, check,
                         posterior):
    """Loader samples/s and MB/s against a plain sequential read of the same shard files.

    MB/s counts the stored bytes of the frames the loader delivers; the plain read is warm (page
    cache). Also timed: the loader's own latent arithmetic (posterior sampling, scaling) on clips
    already in memory, one thread, no I/O — the floor of its per-sample work. The loader runs in a
    fresh process, whose peak RSS is reported.

    \b
    Example:
      latte bench loader work/cache
      latte bench loader --synthetic-gb 6 --format mindrecord
    """
    from latte_toolkit.pipelines.bench import bench_loader
    click.echo(json.dumps(bench_loader(cache_dir, synthetic_gb, fmt, batch, num_frames, sample_stride, None,
                                       workers, max_batches, check, posterior)))


@bench.command("attention")
@click.option("--tokens", default=16384, show_default=True, type=POSITIVE_INT, help="Sequence length (one head group).")
@click.option("--head-dim", default=64, show_default=True, type=POSITIVE_INT, help="Head size.")
@click.option("--block-size", default=512, show_default=True, type=POSITIVE_INT, help="Key block of the block-wise path.")
def bench_attention_command(tokens, head_dim, block_size):
    """Peak memory of plain vs flash (block-wise) attention, forward + backward, on CPU.

    Each path runs in a fresh process; `attention_mb` is its peak RSS above the RSS before the call.

    \b
    Example:
      latte bench attention --tokens 16384
    """
    from latte_toolkit.train.bench import bench_attention
    click.echo(json.dumps(bench_attention(tokens, head_dim, block_size)))


if __name__ == "__main__":
    main()
