"""The key tables of the batch jobs (ingest, curate, cache, report), and those jobs run from a
resolved config, which is saved in the job folder when the job finishes.

Tables are KeyTables (latte_core/keys.py): `latte <stage> -c stage.yaml` reads the keys (flat
or under the seed's `data_config:`), command-line options override them, and the seed's spellings
(`data_folder`, `cache_folder`, `cache_file_type`, `resume_cache_index`, ...) are aliases.
"""
import os

from latte_core.atomic import write_json_atomically
from latte_core.errors import UserError
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.datasets.storage import Store, is_url, redact_config
from latte_core.keys import AT_LEAST_1, NON_NEGATIVE, NUMBER, OPTIONAL_STR, POSITIVE, SEED, Key, KeyTable

# the resolved config of a job, beside (never inside) the fingerprint the job itself checks on resume
RESOLVED_CONFIG = "config.resolved.json"


class ConfigError(UserError):
    pass


def storage_key():
    return Key("storage_options", (dict, type(None)), None,
               "options of the fsspec driver of s3:// (or other) URLs, e.g. {endpoint_url: ..., key: ..., secret: "
               "...}; default: the driver's own (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws); never logged, "
               "redacted in every JSON written")


def break_lock_key():
    return Key("break_lock", bool, False, "on an object store: take over the lock of a job that stopped (no "
                                          "heartbeat for 60 s); a live job's lock is never taken")


INGEST_KEYS = KeyTable([
    Key("sources", (list, str), None, "folders (searched recursively for videos and frame folders), video files, "
                                      "or .csv/.json lists with a `video` column (and optional `caption`, `class`)"),
    Key("out", str, None, "output folder (resumable)"),
    Key("num_frames", (int, type(None)), None, "clip length; shorter inputs fail as too short", range=AT_LEAST_1),
    Key("sample_stride", int, 1, "frame stride of a clip", range=AT_LEAST_1),
    Key("verify", bool, False, "decode every frame (false: container metadata, and the keyframes' sizes and "
                               "pixel formats)"),
    Key("workers", int, 1, "local dask worker processes; 0 runs in this process", range=NON_NEGATIVE),
    Key("scheduler", OPTIONAL_STR, None, "address of an existing dask scheduler, e.g. tcp://10.0.0.1:8786"),
    Key("retry_failed", bool, False, "also re-try the inputs that failed before"),
    Key("decode_timeout", NUMBER, 60.0, "seconds before a hung decode is killed", range=POSITIVE),
    Key("unit_size", int, 32, "inputs per unit of work", range=AT_LEAST_1),
    storage_key(), break_lock_key(),
], {"data_folder": "sources", "csv_path": "sources", "data_path": "sources", "sample_n_frames": "num_frames"},
    ConfigError)

def _check_curate(values):
    """Keys that conflict: refused before the job starts (as run_curate checks them)."""
    for low, high in (("min_clip_frames", "max_clip_frames"), ("min_motion", "max_motion")):
        if values[high] is not None and values[low] > values[high]:
            raise ConfigError(f"{low} ({values[low]}) is larger than {high} ({values[high]}): no clip could be kept")


CURATE_KEYS = KeyTable([
    Key("manifest", str, None, "ingest output folder (or its manifest.parquet)"),
    Key("out", str, None, "curate folder (resumable): clips.parquet, filtered.parquet, failures.parquet"),
    Key("min_clip_frames", int, 16, "clips shorter than this are dropped (filtered.parquet: too short)",
        range=AT_LEAST_1),
    Key("max_clip_frames", (int, type(None)), 256, "longer scenes are split into clips of this many frames from "
                                                   "their start (null: never split)", range=AT_LEAST_1),
    Key("trim_frames", int, 1, "frames dropped on each side of a scene cut or dissolve", range=NON_NEGATIVE),
    Key("cut_threshold", NUMBER, 27.0, "hard cut: PySceneDetect ContentDetector's score (mean HSV change between "
                                       "consecutive frames, 0-255) at or above this", range=POSITIVE),
    Key("dissolve_threshold", NUMBER, 0.05, "dissolve: change over 8 frames (mean absolute difference of frames "
                                            "divided by their mean brightness) at or above this, the frames "
                                            "between a linear blend", range=POSITIVE),
    Key("flash_frames", int, 4, "a cut whose frame before returns within this many frames is a flash, not a cut",
        range=NON_NEGATIVE),
    Key("min_motion", NUMBER, 0.1, "clips whose motion (mean optical-flow magnitude, px/frame at a 128-px short "
                                   "side) is below this are dropped as static", range=NON_NEGATIVE),
    Key("max_motion", (int, float, type(None)), None, "clips whose motion is above this are dropped (too much "
                                                      "motion; null: no limit)", range=NON_NEGATIVE),
    Key("min_size", int, 0, "clips whose short side (px, as displayed, after a letterbox crop) is below this are "
                            "dropped (too small)", range=NON_NEGATIVE),
    Key("letterbox", str, "drop", "clips with black bars: drop them, crop the bars (clips.parquet's crop_top, "
                                  "crop_left, height, width), or keep them whole", ("crop", "drop", "keep")),
    Key("dedup_distance", (int, float, type(None)), 8.0, "a clip whose frame hashes (DCT hashes of 3 frames) differ "
                                                         "from an earlier kept clip's by at most this many of 64 bits "
                                                         "per frame is dropped as its duplicate (null: no check)",
        range=NON_NEGATIVE),
    Key("workers", int, 1, "local dask worker processes; 0 runs in this process", range=NON_NEGATIVE),
    Key("scheduler", OPTIONAL_STR, None, "address of an existing dask scheduler, e.g. tcp://10.0.0.1:8786"),
    Key("unit_size", int, 8, "videos per unit of work (each video is decoded once, in one unit)", range=AT_LEAST_1),
    storage_key(), break_lock_key(),
], {}, ConfigError, validate=_check_curate)

CACHE_KEYS = KeyTable([
    Key("manifest", str, None, "ingest output folder (or its manifest.parquet), or a curate folder (its clips)"),
    Key("vae", str, None, "diffusers AutoencoderKL folder"),
    Key("out", str, None, "cache folder (resumable)"),
    Key("format", str, "numpy", "shard format", FORMAT_NAMES),
    Key("image_size", int, 256, "frame size after crop+resize", range=AT_LEAST_1),
    Key("dtype", str, "float16", "stored dtype", ("float16", "float32")),
    Key("store", str, "posterior", "posterior: mean and std per frame (a fresh sample each epoch); sample: one "
                                   "fixed draw", ("posterior", "sample")),
    # 0: on a 2-core machine one process is the fastest runner for every VAE measured (the convolutions
    # already use both cores; a worker adds pickling and a second copy of the VAE): README, Runners
    Key("workers", int, 0, "local dask worker processes, one VAE each; 0 (default) runs in this process",
        range=NON_NEGATIVE),
    Key("scheduler", OPTIONAL_STR, None, "address of an existing dask scheduler"),
    Key("micro_batch", int, 8, "frames per VAE call", range=AT_LEAST_1),
    Key("shard_videos", int, 16, "videos per shard (from a curate folder: whole videos, all their clips), the unit "
                                 "of work and of resume", range=AT_LEAST_1),
    Key("chunk_frames", int, 16, "frames per MindRecord record / Parquet row", range=AT_LEAST_1),
    Key("skip_videos", int, 0, "the seed's manual resume: skip the first N manifest videos (not needed here: "
                               "re-running resumes from the ledger)", range=NON_NEGATIVE),
    Key("seed", int, 0, "seed of the `store: sample` draws", range=SEED),
    Key("text_encoder", OPTIONAL_STR, None, "CLIP text-encoder folder (tokenizer/ + text_encoder/, or one flat "
                                            "folder): also store each video's caption embedding (77 x width, "
                                            "the cache dtype; no caption: the empty prompt's) and the empty "
                                            "prompt's once; its sha256 joins the fingerprint"),
    storage_key(), break_lock_key(),
], {"cache_folder": "out", "cache_file_type": "format", "vae_path": "vae", "sample_size": "image_size",
    "resume_cache_index": "skip_videos"}, ConfigError)

REPORT_KEYS = KeyTable([
    Key("cache", str, None, "cache folder (latte cache) or curate folder (latte curate)"),
    Key("verify", bool, False, "re-hash every shard (curate: unit) and compare with the ledger, and check that every "
                               "value a cache stores is finite (exit 1 on a mismatch or a non-finite value)"),
    Key("plot", OPTIONAL_STR, None, "also draw each shard's seconds per phase (decode, encode, write) into this PNG; "
                                    "for a curate folder, the histograms of clip lengths and motion"),
    storage_key(),
], {}, ConfigError)

def save_resolved_config(folder, config, name=RESOLVED_CONFIG):
    """Write the resolved config as FOLDER/config.resolved.json (one rename: whole or absent; in an object
    store one PUT), its storage_options redacted."""
    options, config = config.get("storage_options"), redact_config(config)
    if is_url(folder):
        Store(folder, options, "--out").put_json(name, config)
        return f"{folder}/{name}"
    path = os.path.join(folder, name)
    write_json_atomically(path, config)
    return path


def run_ingest_job(config, progress=True):
    """`latte ingest` from a resolved INGEST_KEYS config; returns run_ingest's summary."""
    # kept here: the ingest job (dask, decord, PyAV) adds ~0.45 s to `latte --help`, which reads this table
    from .ingest import run_ingest
    sources = [config["sources"]] if isinstance(config["sources"], str) else config["sources"]
    summary = run_ingest(sources, config["out"], num_frames=config["num_frames"],
                         sample_stride=config["sample_stride"], verify=config["verify"], workers=config["workers"],
                         scheduler=config["scheduler"], retry_failed=config["retry_failed"],
                         timeout=config["decode_timeout"], unit_size=config["unit_size"], progress=progress,
                         storage_options=config["storage_options"], break_lock=config["break_lock"])
    save_resolved_config(summary["out_dir"], config)
    return summary


def run_curate_job(config, progress=True):
    """`latte curate` from a resolved CURATE_KEYS config; returns run_curate's summary."""
    # kept here: the curate job (dask, decord, PyAV) would load with `latte --help`, which reads this table
    from .curate import run_curate
    summary = run_curate(config["manifest"], config["out"], min_clip_frames=config["min_clip_frames"],
                         max_clip_frames=config["max_clip_frames"], trim_frames=config["trim_frames"],
                         cut_threshold=config["cut_threshold"], dissolve_threshold=config["dissolve_threshold"],
                         flash_frames=config["flash_frames"], min_motion=config["min_motion"],
                         max_motion=config["max_motion"], min_size=config["min_size"], letterbox=config["letterbox"],
                         dedup_distance=config["dedup_distance"],
                         workers=config["workers"],
                         scheduler=config["scheduler"], unit_size=config["unit_size"], progress=progress,
                         storage_options=config["storage_options"], break_lock=config["break_lock"])
    save_resolved_config(summary["out_dir"], config)
    return summary


def run_cache_job(config, progress=True):
    """`latte cache` from a resolved CACHE_KEYS config; returns run_cache's summary."""
    # kept here: the cache job (MindSpore) adds ~2.4 s to `latte --help`, which reads this table
    from .cache import run_cache
    summary = run_cache(config["manifest"], config["vae"], config["out"], fmt=config["format"],
                        image_size=config["image_size"], dtype=config["dtype"], store=config["store"],
                        workers=config["workers"], scheduler=config["scheduler"], micro_batch=config["micro_batch"],
                        shard_videos=config["shard_videos"], chunk_frames=config["chunk_frames"],
                        skip_videos=config["skip_videos"], seed=config["seed"], text_encoder=config["text_encoder"],
                        progress=progress, storage_options=config["storage_options"],
                        break_lock=config["break_lock"])
    save_resolved_config(summary["out_dir"], config)
    return summary
