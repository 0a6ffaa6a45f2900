"""The key tables of the pipeline stages (ingest, cache, report, quality, demo, convert, bench), and the
ingest and cache jobs run from a resolved config, which is saved in the job folder when the job finishes.

Tables are KeyTables (latte_toolkit.train.config): `latte <stage> -c stage.yaml` reads the keys (flat
or under the seed's `data_config:`), command-line options override them, and the seed's spellings
(`data_folder`, `cache_folder`, `cache_file_type`, `resume_cache_index`, ...) are aliases.
"""
import os

from latte_core.atomic import write_json_atomically
from latte_core.errors import UserError
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.train.config import AT_LEAST_1, NON_NEGATIVE, NUMBER, POSITIVE, Key, KeyTable, Range

# the resolved config of a job, beside (never inside) the fingerprint the job itself checks on resume
RESOLVED_CONFIG = "config.resolved.json"
DEVICES = ("CPU", "GPU", "Ascend")
SEED = Range(0, 2 ** 32 - 1)
OPTIONAL_STR = (str, type(None))


class ConfigError(UserError):
    pass


INGEST_KEYS = KeyTable([
    Key("sources", (list, str), None, "folders (searched recursively for videos and frame folders), video files, "
                                      "or .csv/.json lists with a `video` column (and optional `caption`, `class`)"),
    Key("out", str, None, "output folder (resumable)"),
    Key("num_frames", (int, type(None)), None, "clip length; shorter inputs fail as too short", range=AT_LEAST_1),
    Key("sample_stride", int, 1, "frame stride of a clip", range=AT_LEAST_1),
    Key("verify", bool, False, "decode every frame (false: container metadata only)"),
    Key("workers", int, 1, "local dask worker processes; 0 runs in this process", range=NON_NEGATIVE),
    Key("scheduler", OPTIONAL_STR, None, "address of an existing dask scheduler, e.g. tcp://10.0.0.1:8786"),
    Key("retry_failed", bool, False, "also re-try the inputs that failed before"),
    Key("decode_timeout", NUMBER, 60.0, "seconds before a hung decode is killed", range=POSITIVE),
    Key("unit_size", int, 32, "inputs per unit of work", range=AT_LEAST_1),
], {"data_folder": "sources", "csv_path": "sources", "data_path": "sources", "sample_n_frames": "num_frames"},
    ConfigError)

CACHE_KEYS = KeyTable([
    Key("manifest", str, None, "ingest output folder (or its manifest.parquet)"),
    Key("vae", str, None, "diffusers AutoencoderKL folder"),
    Key("out", str, None, "cache folder (resumable)"),
    Key("format", str, "numpy", "shard format", FORMAT_NAMES),
    Key("image_size", int, 256, "frame size after crop+resize", range=AT_LEAST_1),
    Key("dtype", str, "float16", "stored dtype", ("float16", "float32")),
    Key("store", str, "posterior", "posterior: mean and std per frame (a fresh sample each epoch); sample: one "
                                   "fixed draw", ("posterior", "sample")),
    Key("workers", int, 1, "local dask worker processes, one VAE each; 0 runs in this process", range=NON_NEGATIVE),
    Key("scheduler", OPTIONAL_STR, None, "address of an existing dask scheduler"),
    Key("micro_batch", int, 8, "frames per VAE call", range=AT_LEAST_1),
    Key("shard_videos", int, 16, "videos per shard, the unit of work and of resume", range=AT_LEAST_1),
    Key("chunk_frames", int, 16, "frames per MindRecord record / Parquet row", range=AT_LEAST_1),
    Key("skip_videos", int, 0, "the seed's manual resume: skip the first N manifest videos (not needed here: "
                               "re-running resumes from the ledger)", range=NON_NEGATIVE),
    Key("seed", int, 0, "seed of the `store: sample` draws", range=SEED),
    Key("text_encoder", OPTIONAL_STR, None, "CLIP text-encoder folder (tokenizer/ + text_encoder/, or one flat "
                                            "folder): also store each video's caption embedding (77 x width, "
                                            "the cache dtype; no caption: the empty prompt's) and the empty "
                                            "prompt's once; its sha256 joins the fingerprint"),
], {"cache_folder": "out", "cache_file_type": "format", "vae_path": "vae", "sample_size": "image_size",
    "resume_cache_index": "skip_videos"}, ConfigError)

REPORT_KEYS = KeyTable([
    Key("cache", str, None, "cache folder (latte cache)"),
    Key("verify", bool, False, "re-hash every shard and compare with the ledger (exit 1 on a mismatch)"),
    Key("plot", OPTIONAL_STR, None, "also draw each shard's seconds per phase (decode, encode, write) into this PNG"),
], {}, ConfigError)

QUALITY_KEYS = KeyTable([
    Key("samples", str, None, "folder of sample_*.gif (latte sample)"),
    Key("manifest", str, None, "ingest folder of the training videos"),
    Key("vae_checkpoint", str, None, "the VAE the model was trained with"),
    Key("real_clips", int, 64, "real clips to compare with", range=AT_LEAST_1),
], {"vae": "vae_checkpoint"}, ConfigError)

DEMO_KEYS = KeyTable([
    Key("out", str, "latte-demo", "folder for everything the demo makes (re-running resumes)"),
    Key("videos", int, 48, "procedural cloud clips to generate", range=AT_LEAST_1),
    Key("train_steps", int, 200, "training steps from the shipped Latte", range=NON_NEGATIVE),
    Key("sample_steps", (int, type(None)), None, "sampler steps; null: 250 (DDPM), or 20 (DPM-Solver++) with text",
        range=AT_LEAST_1),
    Key("num_videos", (int, type(None)), None, "videos to sample; null: 4, or with text one per prompt of the "
                                               "demo's 20 (fewer: its first ones)", range=AT_LEAST_1),
    Key("seed", int, 0, "seed of the clips, the training run and the samples", range=SEED),
    Key("quality_clips", int, 64, "real clips the quality check compares the samples with (latte quality's "
                                  "--real-clips)", range=AT_LEAST_1),
    Key("text", bool, False, "the text-to-video demo: captioned clips, the shipped text encoder and text Latte, "
                             "one video per prompt (sample_steps are DPM-Solver++'s) and the prompt check"),
], {}, ConfigError)

CONVERT_LATTE_KEYS = KeyTable([
    Key("source", str, None, "official Latte checkpoint: .pt/.pth/.bin (read without torch), .safetensors or .ckpt"),
    Key("target", str, None, "output file: .ckpt (MindSpore) or .safetensors"),
    Key("model_name", OPTIONAL_STR, None, "check the weights are this variant (e.g. Latte-XL/2); read off the "
                                          "weights otherwise"),
], {}, ConfigError)

CONVERT_VAE_KEYS = KeyTable([
    Key("source", str, None, "a diffusers folder (config.json + diffusion_pytorch_model.safetensors/.bin) or one "
                             "weights file in the diffusers or original LDM layout (first_stage_model. prefix "
                             "allowed)"),
    Key("target", str, None, "output file: .ckpt (MindSpore) or .safetensors"),
    Key("vae_config", OPTIONAL_STR, None, "diffusers config.json for a single weights file; otherwise the "
                                          "architecture is read off the weights, with 32 norm groups as in every "
                                          "published SD VAE"),
], {}, ConfigError)

KERNELS = Key("kernels", str, "both", "the CPU kernels of latte_core (on), MindSpore's own ops (off), or both "
                                      "paths in one run", ("on", "off", "both"))
DEVICE = Key("device", str, "CPU", "device", DEVICES)

BENCH_STEP_KEYS = KeyTable([
    Key("model_name", str, "Latte-S/2", "Latte variant"),
    Key("depth", (int, type(None)), None, "override the variant's block count (spatial + temporal, even); fewer "
                                          "blocks compile faster", range=AT_LEAST_1),
    Key("frames", int, 8, "frames per clip", range=AT_LEAST_1),
    Key("latent", int, 16, "latent height and width", range=AT_LEAST_1),
    Key("batch", int, 2, "clips per step", range=AT_LEAST_1),
    Key("steps", int, 5, "steps to run; the first (compile) is reported apart", range=Range(2)),
    Key("flash_attention", bool, False, "use the flash attention backend (fused on Ascend, block-wise elsewhere)"),
    Key("images", int, 0, "images appended to each clip (image-video joint training's use_image_num): the step "
                          "then runs on frames + images frames", range=NON_NEGATIVE),
    DEVICE, KERNELS,
], {}, ConfigError)

BENCH_FORWARD_KEYS = KeyTable([
    Key("model_name", str, "Latte-S/2", "Latte variant"),
    Key("frames", int, 16, "frames per video", range=AT_LEAST_1),
    Key("latent", int, 32, "latent height and width (32: 256-pixel frames)", range=AT_LEAST_1),
    Key("batch", int, 2, "videos per forward", range=AT_LEAST_1),
    Key("repeats", int, 3, "timed forwards after the compiling one", range=AT_LEAST_1),
    DEVICE, KERNELS,
], {}, ConfigError)

BENCH_VAE_KEYS = KeyTable([
    Key("size", int, 256, "frame height and width (a multiple of 8)", range=AT_LEAST_1),
    Key("batch", int, 4, "frames per encoder call", range=AT_LEAST_1),
    Key("repeats", int, 3, "timed encoder calls after the compiling one", range=AT_LEAST_1),
    Key("dtype", str, "float32", "compute dtype of convolutions and projections", ("float32", "float16")),
    DEVICE, KERNELS,
], {}, ConfigError)

BENCH_INGEST_KEYS = KeyTable([
    Key("sources", list, None, "inputs to ingest (as for `latte ingest`)"),
    Key("workers", int, 0, "ingest workers (0: in this process, one decode child, i.e. one core)",
        range=NON_NEGATIVE),
    Key("replan_inputs", int, 10000, "also time re-planning a finished run over this many synthetic inputs "
                                     "(0: skip)", range=NON_NEGATIVE),
], {}, ConfigError)

BENCH_CACHE_KEYS = KeyTable([
    Key("format", str, "numpy", "shard format", FORMAT_NAMES),
    Key("vae", OPTIONAL_STR, None, "diffusers VAE folder (null: a random-weight VAE of sd-vae-ft-mse's "
                                   "architecture)"),
    Key("videos", int, 2, "synthetic H.264 clips to cache", range=AT_LEAST_1),
    Key("frames", int, 16, "frames per clip", range=AT_LEAST_1),
    Key("size", int, 256, "cached frame size", range=AT_LEAST_1),
    Key("micro_batch", int, 8, "frames per VAE call", range=AT_LEAST_1),
    Key("text_encoder", OPTIONAL_STR, None, "also time the job with and without caption embeddings (a caption of "
                                            "its own per video): clip-l (random weights, CLIP ViT-L/14's text "
                                            "tower: width 768, 12 layers, 12 heads), small (random: 64, 4, 4) or "
                                            "a text-encoder folder"),
    Key("repeats", int, 3, "with text_encoder: timed jobs of each kind, interleaved after an untimed pair "
                           "(medians)", range=AT_LEAST_1),
], {}, ConfigError)

BENCH_LOADER_KEYS = KeyTable([
    Key("cache", OPTIONAL_STR, None, "cache folder to read (null: a synthetic cache of random latents, written first)"),
    Key("synthetic_gb", NUMBER, 1.0, "without a cache: size of the synthetic cache", range=POSITIVE),
    Key("format", str, "numpy", "format of the synthetic cache", FORMAT_NAMES),
    Key("batch", int, 4, "clips per batch", range=AT_LEAST_1),
    Key("num_frames", int, 16, "frames per clip", range=AT_LEAST_1),
    Key("sample_stride", int, 1, "frame stride within a clip", range=AT_LEAST_1),
    Key("workers", int, 2, "loader num_parallel_workers", range=AT_LEAST_1),
    Key("max_batches", int, 0, "stop after this many batches (0: one epoch)", range=NON_NEGATIVE),
    Key("check", str, "full", "shard check when the loader starts (sha256 or sizes against the ledger)",
        ("full", "size")),
    Key("posterior", str, "sample", "latents drawn from the cached posterior, or its mean (reads only the mean)",
        ("sample", "mean")),
    Key("images", int, 0, "the loader's use_image_num: single frames of other videos appended to each clip (each a "
                          "random frame of a random other video)", range=NON_NEGATIVE),
], {}, ConfigError)

BENCH_ATTENTION_KEYS = KeyTable([
    Key("tokens", int, 16384, "sequence length (one head group)", range=AT_LEAST_1),
    Key("head_dim", int, 64, "head size", range=AT_LEAST_1),
    Key("block_size", int, 512, "key block of the block-wise path", range=AT_LEAST_1),
], {}, ConfigError)


def save_resolved_config(folder, config, name=RESOLVED_CONFIG):
    """Write the resolved config as FOLDER/config.resolved.json (one rename: whole or absent)."""
    path = os.path.join(folder, name)
    write_json_atomically(path, config)
    return path


def run_ingest_job(config, progress=True):
    """`latte ingest` from a resolved INGEST_KEYS config; returns run_ingest's summary."""
    from .ingest import run_ingest
    sources = [config["sources"]] if isinstance(config["sources"], str) else config["sources"]
    summary = run_ingest(sources, config["out"], num_frames=config["num_frames"],
                         sample_stride=config["sample_stride"], verify=config["verify"], workers=config["workers"],
                         scheduler=config["scheduler"], retry_failed=config["retry_failed"],
                         timeout=config["decode_timeout"], unit_size=config["unit_size"], progress=progress)
    save_resolved_config(summary["out_dir"], config)
    return summary


def run_cache_job(config, progress=True):
    """`latte cache` from a resolved CACHE_KEYS config; returns run_cache's summary."""
    from .cache import run_cache
    summary = run_cache(config["manifest"], config["vae"], config["out"], fmt=config["format"],
                        image_size=config["image_size"], dtype=config["dtype"], store=config["store"],
                        workers=config["workers"], scheduler=config["scheduler"], micro_batch=config["micro_batch"],
                        shard_videos=config["shard_videos"], chunk_frames=config["chunk_frames"],
                        skip_videos=config["skip_videos"], seed=config["seed"], text_encoder=config["text_encoder"],
                        progress=progress)
    save_resolved_config(summary["out_dir"], config)
    return summary
