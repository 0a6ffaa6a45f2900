"""The text-to-video demo's parts: the tokenizer learned from its captions, the prompt check."""
import json
import warnings

import numpy as np
import pytest

from latte_core.text_encoder import TextEncoder
from latte_toolkit.inference.quality import colour_features, sample_prompts
from latte_toolkit.tools.demo import text_demo_prompts
from latte_toolkit.tools.demo_text_encoder import byte_level_vocabulary, learn_bpe_merges, write_caption_text_encoder
from latte_toolkit.tools.prompt_check import MOTION_FLOOR, caption_direction, check_prompts
from latte_toolkit.tools.synthetic import (
    CAPTION_DIRECTIONS, DIRECTIONS, HELD_OUT_COMBINATIONS, SKY_COLOURS, captioned_cloud_frames, cloud_caption)


def test_bpe_merges_follow_pair_frequency_then_sort_order():
    # words a a</w> (twice) and a b</w>: the pair (a, a</w>) is the most frequent, then (a, b</w>) is left
    assert learn_bpe_merges(["aa aa ab"]) == ["a a</w>", "a b</w>"]
    assert learn_bpe_merges(["aa aa ab"], max_merges=1) == ["a a</w>"]
    # a tie (each pair once) goes to the pair that sorts first; CLIP's normaliser lower-cases first
    assert learn_bpe_merges(["BA AB"]) == ["a b</w>", "b a</w>"]
    vocabulary = byte_level_vocabulary(["a a</w>"])
    assert vocabulary["aa</w>"] == 512 and vocabulary["<|startoftext|>"] == 513 and len(vocabulary) == 515
    assert len(byte_level_vocabulary(size=49408)) == 49408
    with pytest.raises(ValueError, match="twice"):
        byte_level_vocabulary(["a a</w>", "a a</w>"])


def test_demo_encoder_keeps_caption_words_whole_and_tokenizes_as_transformers(tmp_path):
    folder = write_caption_text_encoder(tmp_path / "text")
    config = json.loads((tmp_path / "text" / "text_encoder" / "config.json").read_text())
    assert config["random_weights"] is True and config["hidden_size"] == 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = TextEncoder.from_pretrained(folder)
    captions = sorted(CAPTION_DIRECTIONS)
    ids = encoder.tokenize(captions)
    words = np.array([len(caption.split()) for caption in captions])
    eos = ids[0, words[0] + 1]
    assert ((ids != eos).sum(axis=1) == words + 1).all()  # start token + one token per word, then padding
    others = ["Clouds, drifting UP!", "nubes a la deriva", "☁️ moving sideways", "x" * 300]
    transformers = pytest.importorskip("transformers")  # test-only oracle, as in test_text_encoder
    reference = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "text" / "tokenizer"))(
        captions + others, padding="max_length", truncation=True, max_length=77)["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (encoder.tokenize(captions + others) == np.array(reference)).all()
    # the direction word changes the embedding from its place on, and the causal mask keeps the places before
    # it equal (up to float32 rounding, ~1e-6 of these unit-variance features): the random encoder tells the
    # captions apart. Measured 0.5-0.6 mean absolute difference at the word; the bound is half that.
    left, right = encoder.encode([cloud_caption("left", "blue"), cloud_caption("right", "blue")])
    assert np.abs(left[3] - right[3]).mean() > 0.25 and np.abs(left[:3] - right[:3]).max() < 1e-5


def test_caption_direction_reads_the_one_direction_word():
    assert all(caption_direction(caption) == direction for caption, direction in CAPTION_DIRECTIONS.items())
    assert caption_direction("Clouds drifting UP, fast") == "up"
    assert caption_direction("clouds over a blue sky") is None
    assert caption_direction("left, then right") is None
    assert caption_direction("upward leftovers") is None  # whole words only


def _clips(pairings, speed=1.5):
    return np.stack([captioned_cloud_frames(d, c, 8, speed=speed, seed=i) for i, (d, c) in enumerate(pairings)])


def _colour_centroids():
    """Each sky colour's centroid over 4 clips of it (other seeds than _clips')."""
    return {colour: colour_features(np.stack([captioned_cloud_frames("left", colour, 8, speed=1.5, seed=100 + i)
                                              for i in range(4)])).mean(axis=0) for colour in SKY_COLOURS}


def test_prompt_check_scores_seen_and_unseen_prompts_apart():
    prompts = text_demo_prompts()
    centroids = _colour_centroids()
    assert len(prompts) == 20 and len(set(prompts[:16])) == 12
    assert [caption_direction(p) for p in prompts[:16]] == [d for d in DIRECTIONS for _ in range(4)]
    held_out = {cloud_caption(d, c) for d, c in HELD_OUT_COMBINATIONS}
    assert set(prompts[16:]) == held_out and not held_out & set(prompts[:16])
    seen = set(CAPTION_DIRECTIONS) - held_out
    pairings = [(CAPTION_DIRECTIONS[p], p.split()[-2]) for p in prompts]
    samples = _clips(pairings)
    result = check_prompts(samples, prompts, seen, centroids)
    every = {"scored": 16, "matched": 16, "accuracy": 1.0}
    assert result["seen"] == {"direction": every, "colour": every} and result["passed"]
    assert result["unseen"]["direction"] == result["unseen"]["colour"] == {"scored": 4, "matched": 4, "accuracy": 1.0}
    assert [row["group"] for row in result["samples"]] == ["seen"] * 16 + ["unseen"] * 4
    # one seen sample drifting the wrong way, or of the wrong sky colour, passes (15 of 16); two do not
    wrong = {"left": "right", "right": "left", "up": "down", "down": "up"}
    other_colour = {"blue": "orange", "orange": "grey", "grey": "green", "green": "blue"}
    for part, swap in (("direction", lambda d, c: (wrong[d], c)), ("colour", lambda d, c: (d, other_colour[c]))):
        for count, passes in ((1, True), (2, False)):
            swapped = samples.copy()
            for i in range(count):
                swapped[4 * i] = _clips([swap(*pairings[4 * i])])[0]
            result = check_prompts(swapped, prompts, seen, centroids)
            assert result["seen"][part]["matched"] == 16 - count and result["passed"] is passes, result["seen"]
    # a still picture has no direction, whatever its noise
    still = np.repeat(samples[:1, :1], 8, axis=1).astype(np.float64)
    still += np.random.default_rng(0).normal(0, 6, still.shape)
    row = check_prompts(np.clip(still, 0, 255).astype(np.uint8), prompts[:1], seen, centroids)["samples"][0]
    assert row["measured"] is None and np.hypot(*row["velocity"]) < MOTION_FLOOR
    # prompts without a direction or colour word are not scored; with no seen prompt scored the check fails
    result = check_prompts(samples[:2], ["clouds", "sky"], seen, centroids)
    assert all(result[group][part]["scored"] == 0 for group in ("seen", "unseen") for part in ("direction", "colour"))
    assert not result["passed"]


def test_sample_prompts_follow_the_gif_order_of_summary_json(tmp_path):
    assert sample_prompts(tmp_path) is None  # no summary: not a text model's samples
    for i in range(3):
        (tmp_path / f"sample_{i:03d}.gif").write_bytes(b"")
    listed = [{"file": str(tmp_path / f"sample_{i:03d}.gif"), "prompt": f"prompt {i}"} for i in (2, 0, 1)]
    (tmp_path / "summary.json").write_text(json.dumps({"prompts": listed}))
    assert sample_prompts(tmp_path) == ["prompt 0", "prompt 1", "prompt 2"]
    (tmp_path / "summary.json").write_text(json.dumps({"prompts": listed[:2]}))
    with pytest.raises(ValueError, match="no prompt for sample_001.gif"):
        sample_prompts(tmp_path)
    (tmp_path / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        sample_prompts(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"condition": None}))
    assert sample_prompts(tmp_path) is None
