"""The text demo's prompt check (`latte quality` and `latte demo --text` on a text model's samples), in two
parts, each against what its caption names:
- direction: each sample's drift direction, read from inference/quality's drift estimate, against the
  caption's "drifting left / right / up / down" (caption_direction); a sample drifting slower than
  MOTION_FLOOR has none;
- colour: each sample's nearest real-clip colour centroid (colour_features averaged over the training
  clips of each sky colour their captions name) against the caption's colour word (caption_colour).
Samples whose prompt is one of the training videos' captions ("seen") must match in both parts for at
least PROMPT_ACCURACY of them; prompts no training video had ("unseen": pairings held out of training)
are reported apart, with no target.
"""
import re

import numpy as np

from latte_toolkit.datasets.video import center_crop_resize, read_frames_at, read_manifest
from latte_toolkit.inference.quality import colour_features, drift_direction, drift_velocity

from .synthetic import DIRECTIONS, SKY_COLOURS


# px/frame: a sample drifting slower has no direction (still pictures that flicker read ~0.01; the
# text demo's clips drift 4-6, synthetic.CLOUD_SPEED).
MOTION_FLOOR = 0.25
PROMPT_ACCURACY = 15 / 16  # of the seen prompts' samples: the text demo's 16 samples, at most one wrong


def caption_direction(prompt):
    """The direction ("left", "right", "up", "down") a caption says its clouds drift in: the one direction
    word among its words; None if it names none or several."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    named = [direction for direction in DIRECTIONS if direction in words]
    return named[0] if len(named) == 1 else None


def caption_colour(prompt):
    """The sky colour (a SKY_COLOURS key) a caption names: the one colour word among its words; None if it
    names none or several."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    named = [colour for colour in SKY_COLOURS if colour in words]
    return named[0] if len(named) == 1 else None


def class_centroids(manifest, class_of, num_frames=8, size=64):
    """{class: the mean colour_features of its videos' first num_frames frames}, class_of(row) naming
    each manifest row's class (None: left out)."""
    features = {}
    for row in read_manifest(manifest):
        name = class_of(row)
        if name is None:
            continue
        frames = read_frames_at(row["path"], row["kind"], range(min(num_frames, row["num_frames"])))
        clip = np.stack([center_crop_resize(frame, size) for frame in frames])
        features.setdefault(name, []).append(colour_features(clip[None])[0])
    return {name: np.mean(values, axis=0) for name, values in features.items()}


def nearest_classes(samples, centroids):
    """Each sample's nearest colour centroid (a key of centroids)."""
    names = list(centroids)
    table = np.stack([centroids[name] for name in names])
    return [names[int(np.argmin(((table - f) ** 2).sum(axis=1)))] for f in colour_features(samples)]


def check_prompts(samples, prompts, seen_captions, colour_centroids):
    """The prompt check of text samples (uint8 (N, F, H, W, 3), their N prompts) given the training
    videos' captions and the colour centroids of their sky colours ({colour word: centroid}): per sample
    its expected and measured direction and colour, and per group ("seen", "unseen") and part
    ("direction", "colour") how many were scored (the prompt names one) and matched."""
    velocity = drift_velocity(samples)
    colours = nearest_classes(samples, colour_centroids)
    seen_captions = set(seen_captions)
    rows, counts = [], {(group, part): [0, 0] for group in ("seen", "unseen") for part in ("direction", "colour")}
    for prompt, (dx, dy), colour in zip(prompts, velocity, colours):
        measured = drift_direction((dx, dy)) if np.hypot(dx, dy) >= MOTION_FLOOR else None
        group = "seen" if prompt in seen_captions else "unseen"
        row = {"prompt": prompt, "group": group, "expected": caption_direction(prompt), "measured": measured,
               "velocity": [round(float(dx), 4), round(float(dy), 4)], "expected_colour": caption_colour(prompt),
               "nearest_colour": colour}
        for part, expected, got in (("direction", row["expected"], measured), ("colour", row["expected_colour"], colour)):
            if expected is not None:
                counts[group, part][0] += 1
                counts[group, part][1] += got == expected
        rows.append(row)
    result = {group: {part: {"scored": scored, "matched": matched,
                             "accuracy": round(matched / scored, 4) if scored else None}
                      for (g, part), (scored, matched) in counts.items() if g == group}
              for group in ("seen", "unseen")}
    result["samples"] = rows
    result["passed"] = all(part["scored"] and part["matched"] >= PROMPT_ACCURACY * part["scored"]
                           for part in result["seen"].values())
    return result


def check_prompts_against_manifest(samples, prompts, manifest):
    """check_prompts with the seen captions and colour centroids of the manifest's captioned clips: the
    prompt check `latte quality` and `latte demo --text` run (inference/quality.check_samples' prompt_check)."""
    captions = {row["caption"] for row in read_manifest(manifest) if row.get("caption")}
    centroids = class_centroids(manifest, lambda row: caption_colour(row.get("caption") or ""))
    return check_prompts(samples, prompts, captions, centroids)
