"""The text demo's prompt check (`latte quality` and `latte demo --text` on a text model's samples): each
sample's drift direction, read from inference/quality's drift estimate, against the direction its caption
names (caption_direction: the cloud demo's captions say "drifting left / right / up / down"); a sample
drifting slower than MOTION_FLOOR has none. Samples whose prompt is one of the training videos' captions
("seen") must match for at least PROMPT_ACCURACY of them; prompts no training video had ("unseen":
pairings held out of training) are reported apart, with no target.
"""
import re

import numpy as np

from latte_toolkit.inference.quality import drift_direction, drift_velocity

from .synthetic import DIRECTIONS, SKY_COLOURS


# px/frame: a sample drifting slower has no direction (still pictures that flicker read ~0.01; the
# text demo's clips drift 1-3, synthetic.CAPTIONED_CLOUD_SPEED).
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


def check_prompts(samples, prompts, seen_captions):
    """The prompt check of text samples (uint8 (N, F, H, W, 3), their N prompts) given the training
    videos' captions: per sample its expected and measured direction, and per group ("seen", "unseen")
    how many were scored (the prompt names a direction) and matched."""
    velocity = drift_velocity(samples)
    seen_captions = set(seen_captions)
    rows, groups = [], {"seen": [0, 0], "unseen": [0, 0]}
    for prompt, (dx, dy) in zip(prompts, velocity):
        expected = caption_direction(prompt)
        measured = drift_direction((dx, dy)) if np.hypot(dx, dy) >= MOTION_FLOOR else None
        group = "seen" if prompt in seen_captions else "unseen"
        if expected is not None:
            groups[group][0] += 1
            groups[group][1] += measured == expected
        rows.append({"prompt": prompt, "group": group, "expected": expected, "measured": measured,
                     "velocity": [round(float(dx), 4), round(float(dy), 4)]})
    result = {name: {"scored": scored, "matched": matched, "accuracy": round(matched / scored, 4) if scored else None}
              for name, (scored, matched) in groups.items()}
    result["samples"] = rows
    scored, matched = groups["seen"]
    result["passed"] = bool(scored) and matched >= PROMPT_ACCURACY * scored
    return result
