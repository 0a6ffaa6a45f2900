"""`latte demo`: the whole toolkit on this machine in minutes, with no downloads.

    procedural H.264 clips of clouds drifting right ─ ingest ─ cache (the shipped VAE) ─ train (a few
    hundred steps, starting from the shipped Latte) ─ sample (DPM-Solver++) ─ quality check ─ one folder:

    OUT/videos/            the generated mp4 clips          OUT/cache_report.json  `latte report`
    OUT/ingest/            manifest.parquet                 OUT/train/             log, checkpoints, loss_curve.png
    OUT/cache/             latent shards                    OUT/samples/           sample_NNN.gif / .mp4 / .npy
    OUT/quality.json       samples vs. real clips and baselines (`latte quality`)
    OUT/config.resolved.json  the demo's settings (each stage's folder holds its own resolved config)

Every stage is the one the commands run, so re-running the demo resumes where it stopped. With
`--train-steps 0` there is no cache or training stage: the shipped Latte is sampled and checked as it is.

`latte demo --text` is the text-to-video demo, the same stages on captioned clips ("clouds drifting left
over a blue sky"): the cache stores each clip's caption embedding from the shipped text encoder
(pretrained/text-clouds, RANDOM weights), the shipped text Latte is fine-tuned on it, and one
video is sampled per prompt (text_demo_prompts(): 4 per direction of trained pairings, then the pairings
held out of training), checked by `latte quality`'s prompt check (tools/prompt_check.py: the direction each sample drifts in).
"""
import json
import logging
import os
import time

from latte_core.atomic import make_output_dir, write_figures_json
from latte_core.vae import load_vae
from latte_toolkit.inference.quality import check_samples, read_sample_gifs, read_sample_latents, sample_prompts
from latte_toolkit.inference.config import SAMPLE_KEYS
from latte_toolkit.inference.sample import run_sample
from latte_toolkit.pipelines.config import CACHE_KEYS, INGEST_KEYS, run_cache_job, run_ingest_job, save_resolved_config
from latte_toolkit.pipelines.report import cache_report
from latte_toolkit.pretrained import PRETRAINED
from latte_toolkit.train.config import load_train_config
from latte_toolkit.train.loop import train

from .prompt_check import check_prompts_against_manifest
from .synthetic import (DIRECTIONS, HELD_OUT_COMBINATIONS, cloud_caption, trained_pairings,
                        write_captioned_cloud_dataset, write_cloud_dataset)

logger = logging.getLogger(__name__)
CLIP_FRAMES = 8
TEXT_GUIDANCE = 4.0  # classifier-free guidance of the text demo's samples
SAMPLE_STEPS = 20  # DPM-Solver++ steps of the demo's samples
# 16 samples: the drift check asks 15 of 16 in the real range (quality.DRIFT_ACCURACY), so fewer would ask all
SAMPLES = 16
LATTE = os.path.join(PRETRAINED, "latte-clouds")
TEXT_LATTE = os.path.join(PRETRAINED, "latte-clouds-text")
TEXT_ENCODER = os.path.join(PRETRAINED, "text-clouds")
VAE = os.path.join(PRETRAINED, "vae-clouds")
# The text demo's VAE: vae-clouds with its decoder fine-tuned on every sky colour the captions name (the same
# encoder, so the same latents): vae-clouds draws grey and green skies blue (pretrained/EXPERIMENTS.md #27).
COLOURS_VAE = os.path.join(PRETRAINED, "vae-clouds-colours")
ARCHITECTURE_KEYS = ("model_name", "depth", "hidden_size", "num_heads", "num_frames", "image_size", "learn_sigma",
                     "patch_embedder", "posterior")


def shipped_latte_config(folder=LATTE):
    """The training config a shipped Latte (its folder) was made with: its architecture and data settings."""
    with open(os.path.join(folder, "state.json")) as handle:
        return json.load(handle)["config"]


def write_demo_clips(folder, videos=48, size=64, seed=1):
    """The unconditional demo's clips (also the unconditional-motion rung's): 32 frames each, drifting
    one way (right) at CLOUD_SPEED; with left and right clips half the samples drifted too slowly
    (pretrained/EXPERIMENTS.md #24)."""
    return write_cloud_dataset(folder, videos=videos, num_frames=32, size=size, seed=seed, one_way=True)


def text_demo_prompts():
    """The text demo's prompts: for each direction its trained sky colours in turn (4 prompts), then the
    pairings held out of training (synthetic.HELD_OUT_COMBINATIONS), one each."""
    seen = []
    for direction in DIRECTIONS:
        colours = [c for d, c in trained_pairings() if d == direction]
        seen += [cloud_caption(direction, colours[i % len(colours)]) for i in range(4)]
    return seen + [cloud_caption(d, c) for d, c in HELD_OUT_COMBINATIONS]


def run_demo(out="latte-demo", videos=48, train_steps=200, sample_steps=None, num_videos=None, seed=0,
             quality_clips=64, text=False, progress=True):
    """Run (or resume) the demo into `out` (the keys of DEMO_KEYS); returns {stage: figures} and writes
    OUT/demo_summary.json and OUT/config.resolved.json. Samples with DPM-Solver++; text: the text-to-video
    demo (one video per prompt of text_demo_prompts(), the first num_videos of them if given; guidance 4)."""
    out = make_output_dir(out, "out")  # before any work: a folder that cannot be made is one error
    timings, started = {}, time.perf_counter()
    latte_dir = TEXT_LATTE if text else LATTE
    shipped = shipped_latte_config(latte_dir)
    vae_dir = COLOURS_VAE if text else VAE
    size = shipped["image_size"]

    def stage(name):
        timings[name] = max(0.0, round(time.perf_counter() - started - sum(timings.values()), 1))  # not -0.0
        logger.info("demo: %s done (%.1f s)", name, timings[name])

    source = os.path.join(out, "videos")
    if not os.path.isdir(source):
        if text:  # the trained pairings only: the held-out ones stay unseen
            pairings = trained_pairings()
            write_captioned_cloud_dataset(source + ".partial", pairings, max(1, videos // len(pairings)),
                                          num_frames=32, size=size, seed=seed + 1)
        else:
            write_demo_clips(source + ".partial", videos=videos, size=size, seed=seed + 1)
        os.rename(source + ".partial", source)
    stage("videos")
    listing = os.path.join(source, "captions.csv") if text else source
    ingest = run_ingest_job(INGEST_KEYS.load(None, {"sources": [listing], "out": os.path.join(out, "ingest"),
                                                    "num_frames": CLIP_FRAMES, "workers": 0}), progress)
    stage("ingest")
    cached_frames = 0
    if train_steps:  # only training reads the latents: --train-steps 0 samples the shipped weights as they are
        run_cache_job(CACHE_KEYS.load(None, {"manifest": os.path.join(out, "ingest"), "vae": vae_dir,
                                             "out": os.path.join(out, "cache"), "format": "numpy", "image_size": size,
                                             "workers": 0, "text_encoder": TEXT_ENCODER if text else None}), progress)
        report = cache_report(os.path.join(out, "cache"), verify=True)
        write_figures_json(report, os.path.join(out, "cache_report.json"))
        cached_frames = report["frames"]
    stage("cache")
    if train_steps:
        architecture = {k: shipped[k] for k in ARCHITECTURE_KEYS}
        # the noise the shipped model learned to remove (a run before the key: independent noise, the default)
        architecture["frame_noise_correlation"] = shipped.get("frame_noise_correlation", 0.0)
        architecture["prediction_type"] = shipped.get("prediction_type", "epsilon")
        architecture["noise_schedule"] = shipped.get("noise_schedule", "linear")
        if text:
            architecture.update(condition="text", class_dropout_prob=shipped["class_dropout_prob"])
        config = load_train_config(None, {
            **architecture, "data_folder": os.path.join(out, "cache"), "train_data_type": "numpy",
            "pretrained_model_path": os.path.join(latte_dir, "ema.ckpt"), "dtype": "fp32",
            "amp_level": "O0", "start_learning_rate": 5e-5, "train_batch_size": 4, "max_steps": train_steps,
            "ema_decay": 0.99, "ckpt_save_interval": train_steps, "step_mode": True, "ckpt_max_keep": 1,
            "output_path": os.path.join(out, "train"), "seed": seed})
        trained = train(config, resume=True, progress=progress)
    else:  # --train-steps 0: the shipped weights as they are (their checkpoint folder: ema.ckpt + state.json)
        trained = {"last_checkpoint": latte_dir, "steps": 0, "loss_curve": None}
    stage("train")
    sample_steps = sample_steps or SAMPLE_STEPS
    num_videos = num_videos or (None if text else SAMPLES)
    sampling = {"checkpoint": trained["last_checkpoint"], "vae_checkpoint": vae_dir, "sampling_steps": sample_steps,
                "sampler": "dpm-solver++", "num_videos": num_videos, "batch_size": num_videos, "seed": seed,
                "output_path": os.path.join(out, "samples")}
    if text:
        prompts = text_demo_prompts()[:num_videos]
        sampling.update(prompts=prompts, num_videos=len(prompts), batch_size=len(prompts),
                        guidance_scale=TEXT_GUIDANCE, text_encoder=TEXT_ENCODER)
    sampled = run_sample(SAMPLE_KEYS.load(None, sampling), progress=progress)
    stage("sample")
    samples_dir = os.path.join(out, "samples")
    quality = check_samples(read_sample_gifs(samples_dir), os.path.join(out, "ingest"), load_vae(vae_dir),
                            real_count=quality_clips, prompts=sample_prompts(samples_dir),
                            prompt_check=check_prompts_against_manifest, latents=read_sample_latents(samples_dir))
    write_figures_json(quality, os.path.join(out, "quality.json"))
    stage("quality")
    summary = {"out": out, "videos": ingest["ok"], "cached_frames": cached_frames, "train_steps": trained["steps"],
               "loss_curve": trained["loss_curve"], "samples": sampled["files"], "quality_passed": quality["passed"],
               "seconds": timings, "total_seconds": round(time.perf_counter() - started, 1)}
    if text:
        summary["prompts"] = {group: quality["prompts"][group] for group in ("seen", "unseen")}
    write_figures_json(summary, os.path.join(out, "demo_summary.json"))
    save_resolved_config(out, {"out": out, "videos": videos, "train_steps": train_steps, "sample_steps": sample_steps,
                               "num_videos": num_videos, "seed": seed, "quality_clips": quality_clips, "text": text})
    return summary

