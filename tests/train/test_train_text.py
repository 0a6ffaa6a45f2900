"""Text-conditioned training (issue 17, item 4): `condition: text` from a cache made by `latte cache
--text-encoder` and from videos with `text_encoder`; caption dropout to the empty prompt's embedding on the
seeded draws; the encoder recorded in state.json (and `latte sample --prompt` reading it); the bad inputs.

The encoder is a 32-wide, one-layer CLIP text model with random weights on the fixture's real CLIP
vocabulary (the fixture's own random encoder embeds prompts too alike for a tiny model to tell them apart)."""
import csv
import os
import json
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import mindspore as ms

from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.loader import CacheLoader
from latte_toolkit.cli import main
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.train.loop import captions_with_dropout, diffusion_draws

from media import moving_square_frames, write_mp4

CAPTIONS = ["a square drifting left", "a square drifting right", "a square drifting up", "",
            "a square drifting down", "a square drifting left"]  # one uncaptioned, one caption twice
WIDTH = 32
TINY = {"model_name": "Latte-S/2", "depth": 2, "hidden_size": 64, "num_heads": 4, "image_size": 32, "num_frames": 4,
        "dtype": "fp32", "amp_level": "O0", "train_data_type": "numpy", "start_learning_rate": 1e-3,
        "train_batch_size": 2, "use_ema": True, "ema_decay": 0.9, "step_mode": True, "ckpt_save_interval": 2,
        "ckpt_max_keep": 5, "seed": 0, "epochs": 100, "condition": "text", "class_dropout_prob": 0.3}


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def text_data(tmp_path_factory, fixtures_dir):
    """Six captioned clips (9 to 19 frames), their ingest folder, two 32-wide random encoders (seeds 0 and
    1), and two numpy caches of the clips (`latte cache`): with the first encoder's caption embeddings, and
    without any."""
    from latte_toolkit.tools.demo_text_encoder import write_random_text_encoder
    root = tmp_path_factory.mktemp("train_text")
    rows = []
    for i, caption in enumerate(CAPTIONS):
        write_mp4(root / "src" / f"clip_{i}.mp4", moving_square_frames(9 + 2 * i, height=40, width=56, seed=i))
        rows.append({"video": f"clip_{i}.mp4", "caption": caption})
    with open(root / "src" / "captions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    run_ingest([root / "src" / "captions.csv"], root / "ingest", workers=0, progress=False)
    tokenizer = fixtures_dir / "text" / "clip_text_small" / "tokenizer"
    encoders = [write_random_text_encoder(root / f"encoder_{seed}", tokenizer / "vocab.json", tokenizer / "merges.txt",
                                          hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2, seed=seed)
                for seed in (0, 1)]
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    for name, text in (("cache", ["--text-encoder", encoders[0]]), ("untexted_cache", [])):
        result = _invoke("cache", "--manifest", root / "ingest", "--vae", vae, "--out", root / name, "--format", "numpy",
                         "--image-size", 32, "--workers", 0, "--shard-videos", 2, *text)
        assert result.exit_code == 0, result.output
    return {"root": root, "ingest": root / "ingest", "cache": root / "cache", "untexted_cache": root / "untexted_cache",
            "vae": vae, "encoders": encoders}


def _config(tmp_path, name="config.yaml", **overrides):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({k: v for k, v in {**TINY, **overrides}.items() if v is not None}))
    return str(path)


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _state(folder):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(folder / "train_state.ckpt")).items()}


def _sampled(run_step, vae, folder, prompt):
    """The latents of one `latte sample` video of a run's checkpoint for `prompt`, with no --text-encoder."""
    result = _invoke("sample", "--checkpoint", run_step, "--vae", vae, "--prompt", prompt, "--cfg-scale", 3,
                     "--sampler", "ddim", "--steps", 4, "--num-videos", 1, "--batch-size", 1, "--seed", 5,
                     "--output-dir", folder)
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["prompts"] == [{"file": str(folder / "sample_000.gif"), "prompt": prompt}]
    return summary, np.load(folder / "sample_000.npy")


def test_a_text_run_learns_records_its_encoder_and_samples_its_prompts(text_data, tmp_path):
    """From the text cache: the loss falls (the 6 clips' first steps near 1, the last ten below 0.35); every
    checkpoint's state.json records the cache's encoder (absolute folder, sha256); `latte sample --prompt`
    of the checkpoint finds that encoder by itself, and another prompt gives another video (the same seed)."""
    from latte_core import TextEncoder
    run = tmp_path / "run"
    config = _config(tmp_path, train_batch_size=6, start_learning_rate=2e-3, use_ema=False, class_dropout_prob=0.1,
                     ckpt_save_interval=40)
    result = _invoke("train", "-c", config, "--cache", text_data["cache"], "--output-dir", run, "--max-steps", 40)
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in _log(run)]
    assert np.mean(losses[:5]) > 0.7 and np.mean(losses[-10:]) < 0.35, (losses[:5], losses[-10:])
    step = run / "ckpt" / "step-00000040"
    state = json.loads((step / "state.json").read_text())
    encoder = TextEncoder.from_pretrained(text_data["encoders"][0])
    assert state["text_encoder"] == {"path": os.path.abspath(text_data["encoders"][0]), "sha256": encoder.sha256}
    assert state["text_encoder"]["sha256"] == open_cache(text_data["cache"]).text_encoder["sha256"]
    weights = ms.load_checkpoint(str(step / "ema.ckpt"))
    assert weights["text_embedding_projection.1.weight"].shape == (64, 77 * WIDTH)  # the cache's encoder width

    summary, left = _sampled(step, text_data["vae"], tmp_path / "left", CAPTIONS[0])
    assert summary["text_encoder"] == state["text_encoder"]
    _, up = _sampled(step, text_data["vae"], tmp_path / "up", CAPTIONS[2])
    assert np.abs(left - up).max() > 1e-3 * np.abs(left).max()  # the trained model reads its prompt


def test_each_sample_and_image_gets_its_own_videos_caption_dropped_on_the_seeded_draws(text_data):
    """The loader's caption embeddings are the cache's (float16 -> float32, exactly) for the clip's video
    and for each image's own video; captions_with_dropout puts the cached empty prompt's where the
    loop's seeded draws (the ones that drop class labels) say so, for clips and images independently."""
    cache = open_cache(text_data["cache"])
    loader = CacheLoader(text_data["cache"], batch_size=3, num_frames=4, seed=1, use_image_num=2, captions=True)
    np.testing.assert_array_equal(loader.null_caption_embedding, cache.null_text_embedding.astype(np.float32))
    assert loader.text_encoder["width"] == WIDTH
    batches = list(loader)
    video, _ = loader.plan.epoch(0)
    loader.epoch = 0  # images_of draws for the loader's current epoch, now 1
    dropped = kept = 0
    for batch in batches:
        assert batch["caption_embedding"].dtype == np.float32
        assert batch["caption_embedding"].shape == (3, 77, WIDTH)
        assert batch["caption_embedding_image"].shape == (3, 2, 77, WIDTH)
        _, _, drop, drop_image = diffusion_draws(batch["index"], 0, 1, batch["latent"].shape[1:], 1000, 0.5, 2)
        text = captions_with_dropout(batch, drop, drop_image, loader.null_caption_embedding)
        assert text.shape == (3, 3, 77, WIDTH) and text.dtype == np.float32
        for k, position in enumerate(batch["index"]):
            places, _ = loader.images_of(position, video[position])
            owners = [loader.video_ids[video[position]]] + [loader.image_entries[p]["video_id"] for p in places]
            for j, (owner, is_dropped) in enumerate(zip(owners, [drop[k]] + list(drop_image[k]))):
                own = cache.caption_embedding(owner).astype(np.float32)
                expected = cache.null_text_embedding.astype(np.float32) if is_dropped else own
                np.testing.assert_array_equal(text[k, j], expected)
                dropped, kept = dropped + bool(is_dropped), kept + (not is_dropped)
    assert dropped and kept  # both cases seen (p = 0.5, 18 draws)
    # 5 distinct prompts (the empty one included): the embeddings tell them apart. The same caption encoded
    # in another shard's batch may differ in its last bits (AVX2 OpenBLAS rounds by batch shape), so
    # embeddings within 1e-3 (float16 cache; distinct captions differ by O(1)) count as one.
    distinct = []
    for embedding in (cache.caption_embedding(i).astype(np.float32) for i in cache.ids):
        if not any(np.abs(embedding - other).max() < 1e-3 for other in distinct):
            distinct.append(embedding)
    assert len(distinct) == 5


@pytest.mark.slow
def test_resume_of_a_joint_text_run_is_bit_identical(text_data, tmp_path):
    """4 steps in one go, and 2 + resume + 2, with 2 images per clip and caption dropout 0.3: the same
    losses and every tensor of the final state (the dropout draws come back with the loader's position)."""
    options = dict(image_video_joint=True, use_image_num=2, num_parallel_workers=2)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _invoke("train", "-c", _config(tmp_path, **options), "--cache", text_data["cache"], "--output-dir", whole,
                   "--max-steps", 4).exit_code == 0
    config = _config(tmp_path, "parts.yaml", **options)
    assert _invoke("train", "-c", config, "--cache", text_data["cache"], "--output-dir", parts,
                   "--max-steps", 2).exit_code == 0
    result = _invoke("train", "-c", config, "--cache", text_data["cache"], "--output-dir", parts, "--max-steps", 4,
                     "--resume")
    assert result.exit_code == 0, result.output
    assert [r["loss"] for r in _log(parts)] == [r["loss"] for r in _log(whole)]
    expected, got = _state(whole / "ckpt" / "step-00000004"), _state(parts / "ckpt" / "step-00000004")
    assert set(expected) == set(got) and "text_embedding_projection.1.weight" in got
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_training_from_videos_encodes_the_manifests_captions(text_data, tmp_path):
    """train_data_type video_file with text_encoder: each distinct caption encoded once by that encoder
    (the uncaptioned video gets the empty prompt's), state.json records the key's encoder; a resume with
    another encoder is refused before anything changes."""
    from latte_core import TextEncoder
    from latte_core.vae import load_vae
    from latte_toolkit.datasets.loader import VideoLoader
    encoder = TextEncoder.from_pretrained(text_data["encoders"][0])
    loader = VideoLoader(text_data["ingest"], load_vae(text_data["vae"]), batch_size=2, num_frames=4,
                         image_size=32, text_encoder=encoder)
    by_video = {e["video_id"]: e for e in loader.image_entries}
    single = encoder.encode(CAPTIONS)
    for i, caption in enumerate(CAPTIONS):
        # another batch shape than the loader's one call: float32 rounding, far below 1e-5 of the largest value
        got = loader.caption_embedding(by_video[f"clip_{i}.mp4"])
        assert np.abs(got - single[i]).max() <= 1e-5 * np.abs(single[i]).max()
    np.testing.assert_array_equal(loader.caption_embedding(by_video["clip_3.mp4"]), loader.null_caption_embedding)

    run = tmp_path / "run"
    config = _config(tmp_path, train_data_type="video_file", data_folder=str(text_data["ingest"]),
                     vae_checkpoint=str(text_data["vae"]), text_encoder=str(text_data["encoders"][0]))
    result = _invoke("train", "-c", config, "--output-dir", run, "--max-steps", 2)
    assert result.exit_code == 0, result.output
    state = json.loads((run / "ckpt" / "step-00000002" / "state.json").read_text())
    assert state["text_encoder"] == {"path": encoder.folder, "sha256": encoder.sha256}
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    result = _invoke("train", "-c", config, "--output-dir", run, "--max-steps", 4, "--resume",
                     "--text-encoder", text_data["encoders"][1])
    assert result.exit_code == 2 and "sha256" in result.output and str(text_data["encoders"][1]) in result.output
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_bad_text_inputs_are_one_error_before_anything_is_written(text_data, tmp_path):
    from latte_core import create_latte
    from latte_core.checkpoint import save_weights
    broken = tmp_path / "broken_encoder"
    shutil.copytree(text_data["encoders"][0], broken)
    (broken / "tokenizer" / "merges.txt").unlink()
    narrow = create_latte("Latte-S/2", input_size=8, num_frames=4, depth=2, hidden_size=64, num_heads=4,
                          condition="text", text_embed_dim=16)
    pretrained = save_weights({p.name: p.asnumpy() for p in narrow.get_parameters()}, tmp_path / "narrow.ckpt")
    videos = {"train_data_type": "video_file", "data_folder": str(text_data["root"] / "src"),
              "vae_checkpoint": str(text_data["vae"])}  # a folder of videos: ingested into the run folder
    cases = {
        "untexted cache": ({}, ["--cache", text_data["untexted_cache"]], "holds none"),
        "width": ({"pretrained_model_path": str(pretrained)}, ["--cache", text_data["cache"]],
                  "16-wide caption embeddings, the data's text encoder makes 32-wide"),
        "no encoder": (videos, [], "needs text_encoder"),
        "missing file": ({**videos, "text_encoder": str(broken)}, [], "tokenizer/merges.txt"),
        "encoder with a cache": ({"text_encoder": str(text_data["encoders"][0])}, ["--cache", text_data["cache"]],
                                 "remove text_encoder"),
    }
    for name, (overrides, args, message) in cases.items():
        run = tmp_path / name.replace(" ", "_")
        result = _invoke("train", "-c", _config(tmp_path, f"{run.name}.yaml", **overrides), "--output-dir", run,
                         "--max-steps", 1, *args)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], (name, result.output)
        assert not run.exists(), name
