"""The shipped weights (pretrained/): small, documented, and their samples pass the quality check."""
import json
import os

import pytest

from click.testing import CliRunner

from latte_toolkit.cli import main
from latte_toolkit.pretrained import PRETRAINED

pytestmark = pytest.mark.slow  # the shipped weights and the demo, end to end

LIMIT = 20 * 1000 * 1000


def test_shipped_weights_are_small_and_come_with_their_commands_and_logs():
    latte, vae = os.path.join(PRETRAINED, "latte-clouds"), os.path.join(PRETRAINED, "vae-clouds")
    for path in (os.path.join(latte, "ema.ckpt"), os.path.join(vae, "diffusion_pytorch_model.safetensors")):
        assert os.path.getsize(path) < LIMIT, path
    for name in ("state.json", "train_log.jsonl", "loss_curve.png", "v_train_log.jsonl", "v_loss_curve.png",
                 "base_train_log.jsonl", "base_loss_curve.png"):
        assert os.path.isfile(os.path.join(latte, name)), name
    assert json.loads(open(os.path.join(latte, "state.json")).read())["config"]["prediction_type"] == "v_prediction"
    for name in ("config.json", "train_vae_log.jsonl", "train_vae_summary.json"):
        assert os.path.isfile(os.path.join(vae, name)), name
    script = open(os.path.join(PRETRAINED, "make_pretrained.sh")).read()
    assert "latte train-vae" in script and "latte train -c" in script and "latte cache" in script
    assert "--decoder-only" in script


def test_the_colours_vae_shares_the_encoder_and_draws_every_sky_colour():
    """vae-clouds-colours: vae-clouds' encoder and scaling factor to the bit (so its latents are the shipped
    Latte's), and a decoder whose round trips of captioned clips keep each one's sky colour (nearest
    centroid of the clips themselves), where vae-clouds draws grey and green skies blue (EXPERIMENTS #27)."""
    import numpy as np
    from safetensors.numpy import load_file
    from latte_core.vae import load_vae
    from latte_toolkit.datasets.video import to_frames
    from latte_toolkit.inference.quality import colour_features, encode_frames
    from latte_toolkit.tools.prompt_check import nearest_classes
    from latte_toolkit.tools.synthetic import DIRECTIONS, SKY_COLOURS, captioned_cloud_frames
    plain, colours = os.path.join(PRETRAINED, "vae-clouds"), os.path.join(PRETRAINED, "vae-clouds-colours")
    for name in ("config.json", "train_vae_log.jsonl", "train_vae_summary.json", "loss_curve.png"):
        assert os.path.isfile(os.path.join(colours, name)), name
    assert json.load(open(os.path.join(colours, "train_vae_summary.json")))["decoder_only"] is True
    assert json.load(open(os.path.join(colours, "config.json"))) == json.load(open(os.path.join(plain, "config.json")))
    before, after = (load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors")) for folder in (plain, colours))
    assert all(np.array_equal(before[name], after[name]) for name in before
               if not name.startswith(("decoder.", "post_quant_conv.")))
    pairings = [(d, c) for d in DIRECTIONS for c in SKY_COLOURS]
    clips = np.stack([captioned_cloud_frames(d, c, 8, speed=5.0, seed=300 + i) for i, (d, c) in enumerate(pairings)])
    centroids = {c: colour_features(clips[[colour == c for _, colour in pairings]]).mean(axis=0) for c in SKY_COLOURS}
    for folder, drawn in ((colours, set(SKY_COLOURS)), (plain, {"blue", "orange"})):
        vae = load_vae(folder)
        latents = encode_frames(vae, clips)
        frames = to_frames(vae.decode_video(latents.reshape(clips.shape[:2] + latents.shape[1:])))
        kept = {c for (_, c), n in zip(pairings, nearest_classes(frames, centroids)) if n == c}
        assert kept == drawn, (folder, kept)


def test_shipped_text_weights_are_small_random_and_come_with_their_commands_and_logs():
    latte, encoder = os.path.join(PRETRAINED, "latte-clouds-text"), os.path.join(PRETRAINED, "text-clouds")
    for path in (os.path.join(latte, "ema.ckpt"), os.path.join(encoder, "text_encoder", "model.safetensors")):
        assert os.path.getsize(path) < LIMIT, path
    for name in ("state.json", "train_log.jsonl", "loss_curve.png", "make_pretrained_text.log"):
        assert os.path.isfile(os.path.join(latte, name)), name
    state = json.loads(open(os.path.join(latte, "state.json")).read())
    assert state["config"]["condition"] == "text" and state["text_encoder"]["sha256"]
    assert state["config"]["prediction_type"] == "v_prediction"
    with open(os.path.join(encoder, "text_encoder", "config.json")) as handle:
        assert json.load(handle)["random_weights"] is True
    script = open(os.path.join(PRETRAINED, "make_pretrained_text.sh")).read()
    assert "write_caption_text_encoder" in script and "--text-encoder text-clouds" in script
    assert "latte-clouds-text.yaml" in script


def test_the_demos_check_passes_on_the_shipped_weights(tmp_path):
    """`latte demo --train-steps 0`: the shipped Latte as it is, 16 samples (DPM-Solver++ 20) checked against
    fresh clips of the demo's source (seed 0's, not the training clips' seed 13): appearance, frame change,
    drift within the real range for 15 of 16 and every sample's latent scale."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--videos", "24", "--train-steps", "0",
                                       "--quality-clips", "32"])
    assert result.exit_code == 0, result.output
    quality = json.loads((out / "quality.json").read_text())
    assert quality["frechet_distance"]["samples"] < quality["frechet_distance"]["noise_decoded"], quality
    assert quality["latent_std"]["within"], quality["latent_std"]
    assert quality["passed"], {k: quality[k] for k in ("motion", "drift")}


def test_the_text_demos_check_passes_on_the_shipped_weights(tmp_path):
    """`latte demo --text --train-steps 0`: the shipped text Latte as it is, one sample per prompt (16 seen,
    4 held-out pairings) checked against fresh captioned clips (seed 1's, not the training clips' seed 11):
    appearance, frame change, drift, latent scale, and 15 of 16 seen prompts by direction and by colour."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--text", "--out", str(out), "--videos", "48", "--train-steps", "0",
                                       "--quality-clips", "48"])
    assert result.exit_code == 0, result.output
    quality = json.loads((out / "quality.json").read_text())
    seen = quality["prompts"]["seen"]
    assert seen["direction"]["matched"] >= 15 and seen["colour"]["matched"] >= 15, seen
    assert quality["passed"], {k: quality[k] for k in ("motion", "drift", "latent_std", "frechet_distance")}


def test_demo_runs_every_stage_into_one_folder_and_resumes(tmp_path):
    """`latte demo` on a few clips and steps: every stage's output lands in one folder; a second run
    redoes nothing that was committed (the ledgers and the checkpoint stay as they were)."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--videos", "6", "--train-steps", "3", "--sample-steps", "10", "--num-videos", "2",
            "--quality-clips", "12"]  # the check's VAE round trip of 64 real clips costs each run 25 s more
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["videos"] == 6 and summary["train_steps"] == 3 and len(summary["samples"]) == 2
    for name in ("ingest/manifest.parquet", "cache/index.parquet", "cache_report.json", "train/loss_curve.png",
                 "samples/sample_000.gif", "samples/sample_001.mp4", "quality.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "cache_report.json").read_text())["frames"] == summary["cached_frames"] == 6 * 32
    ledgers = {name: (out / name).read_bytes() for name in ("ingest/ledger.jsonl", "cache/ledger.jsonl")}
    checkpoint = os.path.join(summary["out"], "train", "ckpt", "step-00000003", "ema.ckpt")
    stamp = os.stat(checkpoint).st_mtime_ns
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert all((out / name).read_bytes() == data for name, data in ledgers.items())
    assert os.stat(checkpoint).st_mtime_ns == stamp


def test_text_demo_caches_captions_samples_prompts_and_checks_their_direction_and_colour(tmp_path):
    """`latte demo --text` on a few clips, steps and prompts: the captions reach the cache, each sample
    is recorded with its prompt, and quality.json holds the prompt check of every sample."""
    out = tmp_path / "demo"
    args = ["demo", "--text", "--out", str(out), "--videos", "12", "--train-steps", "2", "--sample-steps", "3",
            "--num-videos", "2", "--quality-clips", "12"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "prompts, seen pairings:" in result.output
    report = json.loads((out / "cache_report.json").read_text())
    assert report["frames"] == 12 * 32 and report["text"]["videos_without_caption"] == 0, report
    prompts = json.loads((out / "samples" / "summary.json").read_text())["prompts"]
    assert [p["prompt"] for p in prompts] == ["clouds drifting left over a blue sky",
                                              "clouds drifting left over an orange sky"]
    quality = json.loads((out / "quality.json").read_text())
    rows = quality["prompts"]["samples"]
    assert ([(r["prompt"], r["group"], r["expected"], r["expected_colour"]) for r in rows]
            == [(p["prompt"], "seen", "left", colour) for p, colour in zip(prompts, ("blue", "orange"))])
    assert all(r["nearest_colour"] in ("blue", "orange", "grey", "green") for r in rows)
    summary = json.loads((out / "demo_summary.json").read_text())
    for part in ("direction", "colour"):
        assert summary["prompts"]["seen"][part]["scored"] == 2 and summary["prompts"]["unseen"][part]["scored"] == 0
    assert summary["quality_passed"] == quality["passed"]
