"""`latte demo`: the whole toolkit on this machine in minutes, with no downloads.

    procedural H.264 clips of clouds ─ ingest ─ cache (the shipped VAE) ─ train (a few hundred steps,
    starting from the shipped Latte) ─ sample (DDPM) ─ quality check ─ one folder:

    OUT/videos/            the generated mp4 clips          OUT/cache_report.json  `latte report`
    OUT/ingest/            manifest.parquet                 OUT/train/             log, checkpoints, loss_curve.png
    OUT/cache/             latent shards                    OUT/samples/           sample_NNN.gif / .mp4 / .npy
    OUT/quality.json       samples vs. real clips and baselines (`latte quality`)
    OUT/config.resolved.json  the demo's settings (each stage's folder holds its own resolved config)

Every stage is the one the commands run, so re-running the demo resumes where it stopped.
"""
import json
import logging
import os
import time

from .sample import PRETRAINED

logger = logging.getLogger(__name__)
CLIP_FRAMES = 8


def shipped_latte_config():
    """The training config the shipped Latte was made with (its architecture and data settings)."""
    with open(os.path.join(PRETRAINED, "latte-clouds", "state.json")) as handle:
        return json.load(handle)["config"]


def run_demo(out="latte-demo", videos=48, train_steps=200, sample_steps=250, num_videos=4, seed=0, progress=True):
    """Run (or resume) the demo into `out` (the keys of DEMO_KEYS); returns {stage: figures} and writes
    OUT/demo_summary.json and OUT/config.resolved.json."""
    from latte_toolkit.train.config import load_train_config
    from latte_toolkit.train.loop import train
    from .config import CACHE_KEYS, INGEST_KEYS, run_cache_job, run_ingest_job, save_resolved_config
    from .quality import check_samples, read_sample_gifs, write_report
    from .report import cache_report
    from latte_core.vae import load_vae
    from .sample import SAMPLE_KEYS, run_sample
    from .synthetic import write_cloud_dataset

    out = os.path.abspath(out)
    timings, started = {}, time.perf_counter()
    shipped = shipped_latte_config()
    vae_dir = os.path.join(PRETRAINED, "vae-clouds")
    size = shipped["image_size"]

    def stage(name):
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)
        logger.info("demo: %s done (%.1f s)", name, timings[name])

    source = os.path.join(out, "videos")
    if not os.path.isdir(source):
        write_cloud_dataset(source + ".partial", videos=videos, num_frames=32, size=size, seed=seed + 1)
        os.rename(source + ".partial", source)
    stage("videos")
    ingest = run_ingest_job(INGEST_KEYS.load(None, {"sources": [source], "out": os.path.join(out, "ingest"),
                                                    "num_frames": CLIP_FRAMES, "workers": 0}), progress)
    stage("ingest")
    run_cache_job(CACHE_KEYS.load(None, {"manifest": os.path.join(out, "ingest"), "vae": vae_dir,
                                         "out": os.path.join(out, "cache"), "format": "numpy", "image_size": size,
                                         "workers": 0}), progress)
    report = cache_report(os.path.join(out, "cache"), verify=True)
    with open(os.path.join(out, "cache_report.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    stage("cache")
    architecture = {k: shipped[k] for k in ("model_name", "depth", "hidden_size", "num_heads", "num_frames",
                                            "image_size", "learn_sigma", "patch_embedder", "posterior")}
    config = load_train_config(None, {
        **architecture, "data_folder": os.path.join(out, "cache"), "train_data_type": "numpy",
        "pretrained_model_path": os.path.join(PRETRAINED, "latte-clouds", "ema.ckpt"), "dtype": "fp32",
        "amp_level": "O0", "start_learning_rate": 5e-5, "train_batch_size": 4, "max_steps": train_steps,
        "ema_decay": 0.99, "ckpt_save_interval": train_steps, "step_mode": True, "ckpt_max_keep": 1,
        "output_path": os.path.join(out, "train"), "seed": seed})
    trained = train(config, resume=True, progress=progress)
    stage("train")
    sample_config = SAMPLE_KEYS.load(None, {
        "checkpoint": trained["last_checkpoint"], "vae_checkpoint": vae_dir, "sampling_steps": sample_steps,
        "num_videos": num_videos, "batch_size": num_videos, "seed": seed, "output_path": os.path.join(out, "samples")})
    sampled = run_sample(sample_config, progress=progress)
    stage("sample")
    quality = check_samples(read_sample_gifs(os.path.join(out, "samples")), os.path.join(out, "ingest"),
                            load_vae(vae_dir))
    write_report(quality, os.path.join(out, "quality.json"))
    stage("quality")
    summary = {"out": out, "videos": ingest["ok"], "cached_frames": report["frames"], "train_steps": trained["steps"],
               "loss_curve": trained["loss_curve"], "samples": sampled["files"], "quality_passed": quality["passed"],
               "seconds": timings, "total_seconds": round(time.perf_counter() - started, 1)}
    with open(os.path.join(out, "demo_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    save_resolved_config(out, {"out": out, "videos": videos, "train_steps": train_steps, "sample_steps": sample_steps,
                               "num_videos": num_videos, "seed": seed})
    return summary

