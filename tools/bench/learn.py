"""`latte bench learn`: the learning ladder. Each rung is a tiny job run end to end through the toolkit's
own stages (procedural clips ─ ingest ─ cache ─ train ─ sample ─ a measure) that a model which learns
what its data shows passes in minutes on a CPU, and a model which does not, fails:

    memorise              4 clips, one class each: each class's samples drift as its clip does
                          (direction, speed within 25 %) and have its colours (nearest real-clip centroid)
    shuffled-control      the same 4 clips with their frames shuffled in time: the samples must NOT drift
                          as the clips do (a check that passes here measures the picture, not motion)
    class-colour          4 sky colours as 4 classes: ≥ 15 of 16 samples have their class's colours
    unconditional-motion  the demo's clips: ≥ 15 of 16 samples drift within the real clips' range
    text-colour           captioned clips: ≥ 15 of 16 samples of seen captions have the caption's colour
    text-direction        the same run: ≥ 15 of 16 drift in the caption's direction

Every rung fine-tunes the shipped Latte (the realistic use: a user starts from weights), its clips cached
and decoded by the shipped VAE that draws them (vae-clouds-colours for coloured skies, vae-clouds for the
demo's; one encoder, so the same latents), with v prediction and the EMA warm-up (a class rung's class
table at CLASS_LR_SCALE x the rate), within a wall budget: training stops at the rung's own step count
or when the budget less SAMPLE_RESERVE_MINUTES runs out (the train key max_minutes), whichever comes
first; re-running a rung resumes its run exactly. A rung that fails within its budget
is diagnosed (`latte diagnose`), not run longer. JSON: {"rungs": {NAME: {"passed", figures, "minutes"}}}.
"""
import csv
import os
import time

import numpy as np

from latte_core.atomic import make_output_dir
from latte_core.errors import UserError
from latte_core.vae import load_vae
from latte_toolkit.datasets.video import center_crop_resize, read_frames_at, read_manifest, write_mp4
from latte_toolkit.inference.config import SAMPLE_KEYS
from latte_toolkit.inference.quality import (check_samples, drift_direction, drift_velocity,
                                             read_sample_gifs)
from latte_toolkit.inference.sample import run_sample
from latte_toolkit.pipelines.config import CACHE_KEYS, INGEST_KEYS, run_cache_job, run_ingest_job
from latte_toolkit.train.config import load_train_config
from latte_toolkit.train.loop import train

from ..demo import (ARCHITECTURE_KEYS, COLOURS_VAE, LATTE, TEXT_ENCODER, VAE, shipped_latte_config, text_demo_prompts,
                    write_demo_clips)
from ..prompt_check import check_prompts_against_manifest, class_centroids, nearest_classes
from ..synthetic import CLOUD_SPEED, SKY_COLOURS, captioned_cloud_frames, trained_pairings, write_captioned_cloud_dataset

SAMPLES = 16
ACCURACY = 15 / 16
SPEED_TOLERANCE = 0.25
GUIDANCE = 4.0  # classifier-free guidance of the conditional rungs' samples (the text demo's)
# The class rungs' class table learns at this multiple of the rate (condition_lr_scale): at one rate the grey
# class still drew orange skies after 1,135 steps (13 of 16); at 10x, 16 of 16 (pretrained/EXPERIMENTS.md #30)
CLASS_LR_SCALE = 10.0
SAMPLE_RESERVE_MINUTES = 1.5  # sampling 16 videos and measuring them, kept out of the training budget
# Each rung's training steps at most: more than fit in the default 10-minute budget on a 2-core CPU
# (0.42 s/step: ~1150), so the budget, not the count, ends a rung there. At 600 steps (the first cap)
# the rungs used half their budget (EXPERIMENTS #21).
RUNG_STEPS = 1500


class LadderError(UserError):
    pass


# ------------------------------------------------------------------------------------------------ the clips
# Memorise: one clip per class, each its own colour and direction (speed 2 px/frame: half a latent pixel).
MEMORISE_CLIPS = (("left", "blue"), ("right", "orange"), ("up", "grey"), ("down", "green"))
MEMORISE_SPEED = 2.0


def _write_listing(folder, rows):
    """folder/list.csv of rows {video, class[, caption]}: what `latte ingest --source list.csv` reads."""
    path = os.path.join(folder, "list.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def memorise_clips(folder, shuffled=False, num_frames=32, size=64):
    """The memorise rung's 4 clips, class i = MEMORISE_CLIPS[i]; `shuffled`: each clip's frames in a
    random order (the control: the same pictures, no motion)."""
    rows = []
    for label, (direction, colour) in enumerate(MEMORISE_CLIPS):
        frames = captioned_cloud_frames(direction, colour, num_frames, size, MEMORISE_SPEED, seed=label)
        if shuffled:
            frames = frames[np.random.default_rng(label).permutation(num_frames)]
        name = f"{label}_{direction}_{colour}.mp4"
        write_mp4(os.path.join(folder, name), frames, fps=8)
        rows.append({"video": name, "class": label})
    return _write_listing(folder, rows)


def colour_clips(folder, per_colour=8, num_frames=32, size=64):
    """The class-colour rung's clips: per_colour clips of each sky colour (class = its index in
    SKY_COLOURS), drifting left or right at the demo's speeds."""
    rows = []
    for label, colour in enumerate(SKY_COLOURS):
        for i in range(per_colour):
            seed = 1009 * label + i
            speed = np.random.default_rng([seed, 1]).uniform(*CLOUD_SPEED)
            frames = captioned_cloud_frames(("left", "right")[i % 2], colour, num_frames, size, speed, seed=seed)
            name = f"{colour}_{i:03d}.mp4"
            write_mp4(os.path.join(folder, name), frames, fps=8)
            rows.append({"video": name, "class": label})
    return _write_listing(folder, rows)


def demo_clips(folder):
    """The unconditional rung's clips: the demo's (48 clips drifting right at CLOUD_SPEED)."""
    return write_demo_clips(folder, videos=48, size=64, seed=1)


def text_clips(folder):
    """The text rungs' clips: the text demo's trained pairings, 4 clips each, with their captions."""
    return write_captioned_cloud_dataset(folder, trained_pairings(), clips_per_combination=4, num_frames=32, size=64,
                                         seed=1)


# ------------------------------------------------------------------------------------------------ the measures
def colour_matches(samples, expected, centroids):
    """How many samples' nearest colour centroid is their expected class, and each one's nearest."""
    nearest = nearest_classes(samples, centroids)
    return sum(n == e for n, e in zip(nearest, expected)), nearest


def _memorised_motion(samples, labels, manifest):
    """Per sample: its drift against its class's clip's (measured on the decoded real clip): direction
    the same and speed within SPEED_TOLERANCE."""
    rows = sorted(read_manifest(manifest), key=lambda row: row["label"])
    clips = [np.stack([center_crop_resize(f, samples.shape[2]) for f in read_frames_at(
        row["path"], row["kind"], range(samples.shape[1]))]) for row in rows]
    reference = drift_velocity(np.stack(clips))
    velocity = drift_velocity(samples)
    matched = 0
    for label, v in zip(labels, velocity):
        want = reference[label]
        speed, wanted_speed = np.hypot(*v), np.hypot(*want)
        matched += bool(drift_direction(v) == drift_direction(want)
                        and abs(speed - wanted_speed) <= SPEED_TOLERANCE * wanted_speed)
    return matched, np.round(velocity, 3).tolist(), np.round(reference, 3).tolist()


# ------------------------------------------------------------------------------------------------ the rungs
class Rung:
    """One rung: its clips (writer), data folder (rungs sharing one share its jobs and training run),
    condition, training steps at most, its check(samples, work) -> figures with "passed", and the VAE that
    caches and decodes its clips (the demo's for the demo's clips; the one that draws every sky colour for
    coloured skies)."""

    def __init__(self, question, clips, data, condition, steps, check, prompts=None, vae=COLOURS_VAE):
        self.question, self.clips, self.data, self.condition = question, clips, data, condition
        self.steps, self.check, self.prompts, self.vae = steps, check, prompts, vae


def _labels(count, classes=4):
    return [i % classes for i in range(count)]


def check_memorise(samples, work):
    labels = _labels(len(samples))
    manifest = os.path.join(work, "ingest")
    moved, velocity, reference = _memorised_motion(samples, labels, manifest)
    coloured, nearest = colour_matches(samples, labels, class_centroids(manifest, lambda row: row["label"]))
    return {"drift_matched": moved, "colour_matched": coloured, "of": len(samples), "velocity": velocity,
            "clip_velocity": reference, "nearest_class": nearest,
            "passed": moved >= ACCURACY * len(samples) and coloured >= ACCURACY * len(samples)}


def check_shuffled_control(samples, work):
    """The control passes when its samples fail memorise's drift check: shuffled frames hold no motion."""
    labels = _labels(len(samples))
    moved, velocity, reference = _memorised_motion(samples, labels, os.path.join(work, "ingest"))
    return {"drift_matched": moved, "of": len(samples), "velocity": velocity,
            "passed": moved < ACCURACY * len(samples)}


def check_class_colour(samples, work):
    labels = _labels(len(samples))
    coloured, nearest = colour_matches(samples, labels, class_centroids(os.path.join(work, "ingest"),
                                                                        lambda row: row["label"]))
    return {"colour_matched": coloured, "of": len(samples), "nearest_class": nearest,
            "passed": coloured >= ACCURACY * len(samples)}


def check_unconditional_motion(samples, work):
    vae = load_vae(VAE)
    quality = check_samples(samples, os.path.join(work, "ingest"), vae)
    return {"drift": quality["drift"], "frechet_distance": quality["frechet_distance"], "motion": quality["motion"],
            "passed": quality["drift_in_real_range"]}


def _seen_prompts():
    return text_demo_prompts()[:SAMPLES]


def _seen_prompt_part(samples, work, part, per_sample):
    """One part ("colour", "direction") of the prompt check of the seen prompts' samples, with each
    sample's `per_sample` figure of the check's rows."""
    result = check_prompts_against_manifest(samples, _seen_prompts(), os.path.join(work, "ingest"))
    figures = result["seen"][part]
    return {f"{part}_matched": figures["matched"], "of": figures["scored"],
            per_sample: [row[per_sample] for row in result["samples"]],
            "passed": figures["matched"] >= ACCURACY * figures["scored"]}


def check_text_colour(samples, work):
    return _seen_prompt_part(samples, work, "colour", "nearest_colour")


def check_text_direction(samples, work):
    return _seen_prompt_part(samples, work, "direction", "velocity")


RUNGS = {
    "memorise": Rung("does it reproduce 4 moving clips, each its own class?", memorise_clips,
                     "memorise", "class", RUNG_STEPS, check_memorise),
    "shuffled-control": Rung("trained on the same clips with frames shuffled in time, do its samples fail the "
                             "drift check?", lambda f: memorise_clips(f, shuffled=True), "shuffled", "class", RUNG_STEPS,
                             check_shuffled_control),
    "class-colour": Rung("does a class label set the sky colour?", colour_clips, "colour", "class", RUNG_STEPS,
                         check_class_colour),
    "unconditional-motion": Rung("do unconditional samples drift like the clips?", demo_clips, "demo", None, RUNG_STEPS,
                                 check_unconditional_motion, vae=VAE),
    "text-colour": Rung("does a caption set the sky colour?", text_clips, "text", "text", RUNG_STEPS, check_text_colour,
                        prompts=_seen_prompts),
    "text-direction": Rung("does a caption set the drift direction?", text_clips, "text", "text", RUNG_STEPS,
                           check_text_direction, prompts=_seen_prompts),
}


MIN_BUDGET_MINUTES = 3.0  # clips, ingest, cache, compiling the training step and sampling one rung


def check_budget(budget_minutes):
    if not budget_minutes >= MIN_BUDGET_MINUTES:  # also refuses NaN
        raise LadderError(f"--budget-minutes {budget_minutes}: a rung needs at least {MIN_BUDGET_MINUTES:g} minutes "
                          f"(its clips, cache, compiling the training step and the sampling of {SAMPLES} videos)")


def rung_names(choice):
    """The rungs `--rung` names: one, or all in ladder order; an unknown name is a LadderError."""
    if choice == "all":
        return list(RUNGS)
    if choice not in RUNGS:
        raise LadderError(f"--rung {choice!r}: choose one of {', '.join(RUNGS)} or all")
    return [choice]


def _listing(videos):
    for name in ("list.csv", "captions.csv"):
        if os.path.exists(os.path.join(videos, name)):
            return os.path.join(videos, name)
    return videos


def _train_config(rung, data, steps, minutes):
    shipped = shipped_latte_config(LATTE)
    return load_train_config(None, {
        **{key: shipped[key] for key in ARCHITECTURE_KEYS}, "condition": rung.condition,
        "num_classes": 4 if rung.condition == "class" else 0, "class_dropout_prob": 0.1,
        "condition_lr_scale": CLASS_LR_SCALE if rung.condition == "class" else 1.0,
        "data_folder": os.path.join(data, "cache"), "train_data_type": "numpy",
        "pretrained_model_path": os.path.join(LATTE, "ema.ckpt"), "prediction_type": "v_prediction",
        "noise_schedule": shipped.get("noise_schedule", "linear"), "dtype": "fp32", "amp_level": "O0", "start_learning_rate": 5e-4, "warmup_steps": 20, "train_batch_size": 8,
        "max_steps": steps, "max_minutes": minutes, "clips_per_video": 2, "use_ema": True, "ema_decay": 0.999,
        "ema_warmup": True, "ckpt_save_interval": 100000, "step_mode": True, "ckpt_max_keep": 1, "output_path": os.path.join(data, "train"), "seed": 0})


def run_rung(name, work, budget_minutes=10.0, max_steps=None, progress=False):
    """Run (or resume) one rung in work/<its data>; returns its figures with "passed" and "minutes"."""
    rung = RUNGS[name]
    started = time.perf_counter()
    deadline = started + 60 * budget_minutes
    data = os.path.abspath(os.path.join(work, rung.data))
    seconds = {}

    def stage(label):
        seconds[label] = round(time.perf_counter() - started - sum(seconds.values()), 1)

    videos = os.path.join(data, "videos")
    if not os.path.isdir(videos):
        os.makedirs(videos + ".partial", exist_ok=True)
        rung.clips(videos + ".partial")
        os.rename(videos + ".partial", videos)
    run_ingest_job(INGEST_KEYS.load(None, {"sources": [_listing(videos)], "out": os.path.join(data, "ingest"),
                                           "num_frames": 8, "workers": 0}), progress)
    run_cache_job(CACHE_KEYS.load(None, {"manifest": os.path.join(data, "ingest"), "vae": rung.vae,
                                         "out": os.path.join(data, "cache"), "format": "numpy", "image_size": 64,
                                         "workers": 0, "text_encoder": TEXT_ENCODER if rung.condition == "text" else None}),
                  progress)
    stage("clips_and_cache")
    target = min(rung.steps, max_steps or rung.steps)
    minutes_left = (deadline - time.perf_counter()) / 60 - SAMPLE_RESERVE_MINUTES
    trained = train(_train_config(rung, data, target, max(minutes_left, 0.1)), resume=True, progress=progress)
    stage("train")
    conditional = rung.condition is not None
    sampling = {"checkpoint": trained["last_checkpoint"], "vae_checkpoint": rung.vae,
                "sampler": "dpm-solver++", "sampling_steps": 20, "num_videos": SAMPLES, "batch_size": 8, "seed": 0,
                "guidance_scale": GUIDANCE if conditional else 1.0, "output_path": os.path.join(data, f"samples-{name}")}
    if rung.prompts:
        sampling.update(prompts=rung.prompts(), text_encoder=TEXT_ENCODER)
    run_sample(SAMPLE_KEYS.load(None, sampling), progress=progress)
    figures = rung.check(read_sample_gifs(sampling["output_path"]), data)
    stage("sample_and_check")
    return {"question": rung.question, **figures, "steps": trained["steps"], "steps_planned": target, "seconds": seconds, "minutes": round((time.perf_counter() - started) / 60, 2), "budget_minutes": budget_minutes}


def run_ladder(choice, work, budget_minutes=10.0, max_steps=None, progress=False):
    """`latte bench learn`: {"rungs": {name: figures}} for the rungs `choice` names."""
    names = rung_names(choice)
    check_budget(budget_minutes)
    make_output_dir(work, "work")  # before any work: a folder that cannot be made is one error
    return {"rungs": {name: run_rung(name, work, budget_minutes, max_steps, progress) for name in names}}
