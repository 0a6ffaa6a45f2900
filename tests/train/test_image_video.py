"""Image-video joint training ("Latte + IMG", issue 18): the loader's images, `latte train` with
image_video_joint / use_image_num, sampling a joint-trained checkpoint, and the bad inputs. Resuming the
loader across worker counts and the msrun equality run with images in test_loader.py and test_train.py."""
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import mindspore as ms

from conftest import all_batches, assert_same_batches
from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.datasets.loader import IMAGE_STREAM, CacheLoader, VideoLoader
from latte_toolkit.tools.fixtures import write_synthetic_cache
from latte_toolkit.cli import main

CLIP = dict(num_frames=4, sample_stride=2)  # a clip spans 7 frames; the 5-frame video gives images only
I = 3
TINY = {"model_name": "Latte-S/2", "depth": 2, "hidden_size": 64, "num_heads": 4, "image_size": 32, "num_frames": 4,
        "dtype": "fp32", "amp_level": "O0", "train_data_type": "numpy", "start_learning_rate": 1e-3,
        "train_batch_size": 2, "use_ema": True, "ema_decay": 0.9, "step_mode": True, "ckpt_save_interval": 3,
        "ckpt_max_keep": 5, "seed": 0, "epochs": 100, "image_video_joint": True, "use_image_num": I}


def _config(tmp_path, name="config.yaml", **overrides):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return str(path)


def _train(config, *args):
    return CliRunner().invoke(main, ["train", "-c", config, *args])


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _state(folder):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(folder / "train_state.ckpt")).items()}


# ------------------------------------------------------------------------------------------ the loader
def test_images_are_posterior_samples_of_frames_of_other_videos(caches):
    """The clip part of each sample is the video-only loader's, bit for bit; each image is a frame of
    another video of the whole cache (the 5-frame one too, too short for a clip), sampled with its
    own noise, with that video's label."""
    options = dict(batch_size=2, clips_per_video=3, seed=3, **CLIP)
    plain = all_batches(CacheLoader(caches["numpy"], **options))
    loader = CacheLoader(caches["numpy"], use_image_num=I, **options)
    joint = all_batches(loader)
    assert len(loader.image_entries) == 8 and len(loader.video_ids) == 7
    cache = open_cache(caches["numpy"])
    video, _ = loader.plan.epoch(0)
    loader.epoch = 0  # images_of draws for the loader's current epoch, now 1
    sources = set()
    for with_images, without in zip(joint, plain):
        assert with_images["latent"].shape == (2, 4 + I, 4, 8, 8) and with_images["label_image"].shape == (2, I)
        assert with_images["label_image"].dtype == np.int32
        np.testing.assert_array_equal(with_images["latent"][:, :4], without["latent"])
        np.testing.assert_array_equal(with_images["index"], without["index"])
        for sample, position in zip(with_images["latent"], with_images["index"]):
            places, frames = loader.images_of(position, video[position])
            ids = [loader.image_entries[p]["video_id"] for p in places]
            assert loader.video_ids[video[position]] not in ids
            sources.update(ids)
            stored = [cache.read(video_id) for video_id in ids]
            mean = np.stack([s["mean"][k] for s, k in zip(stored, frames)]).astype(np.float32)
            std = np.stack([s["std"][k] for s, k in zip(stored, frames)]).astype(np.float32)
            noise = np.random.default_rng([3, 0, int(position), IMAGE_STREAM]).standard_normal(mean.shape,
                                                                                            dtype=np.float32)
            # float32 arithmetic in another order than the loader's in-place one: a few ulps
            np.testing.assert_allclose(sample[4:], (mean + std * noise) * 0.18215, rtol=1e-6, atol=1e-7)
        assert (with_images["label_image"] == -1).all()  # these videos have no class
    assert "sky/short" in sources  # images come from every usable video, not only those long enough for a clip


def test_every_format_and_worker_count_gives_the_same_images(caches):
    options = dict(batch_size=3, clips_per_video=2, seed=1, shuffle_window=2, use_image_num=I, **CLIP)
    reference = all_batches(CacheLoader(caches["numpy"], **options))
    for fmt in FORMAT_NAMES:
        for workers in (1, 2):
            assert_same_batches(reference, all_batches(CacheLoader(caches[fmt], num_parallel_workers=workers, **options)))


def test_resume_with_images_on_other_ranks(caches):
    """(Resuming with other worker counts: test_loader's resume test with use_image_num 3.) Two ranks of
    batch 1 restored from a single loader's state share out the rest of its epoch, images included."""
    options = dict(batch_size=2, clips_per_video=4, seed=8, use_image_num=I, **CLIP)  # 28 clips
    expected = all_batches(CacheLoader(caches["numpy"], **options))
    first = CacheLoader(caches["mindrecord"], **options)
    iterator = iter(first)
    for _ in range(4):
        next(iterator)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["use_image_num"] == I and state["position"] == 8
    ranks = []
    for rank in range(2):
        loader = CacheLoader(caches["parquet"], rank=rank, world_size=2, **{**options, "batch_size": 1})
        loader.load_state_dict(state)
        ranks.append(all_batches(loader))
    merged = [{key: np.concatenate([a[key], b[key]]) for key in a} for a, b in zip(*ranks)]
    assert_same_batches(expected[4:], merged)
    with pytest.raises(ValueError, match="use_image_num"):
        CacheLoader(caches["numpy"], **{**options, "use_image_num": 2}).load_state_dict(state)
    with pytest.raises(ValueError, match="use_image_num"):  # nor a video-only state into a joint loader
        CacheLoader(caches["numpy"], **options).load_state_dict(CacheLoader(caches["numpy"], **{
            **options, "use_image_num": 0}).state_dict())


def test_the_uncached_path_gives_the_cached_images(caches):
    from latte_core import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(caches["vae"])
    options = dict(batch_size=3, seed=9, shuffle=False, use_image_num=I, **CLIP)
    cached = all_batches(CacheLoader(caches["float32"], **options))
    uncached = all_batches(VideoLoader(caches["ingest"], vae, image_size=32, micro_batch=4, num_parallel_workers=2, **options))
    assert len(uncached) == len(cached) == 2
    for a, b in zip(cached, uncached):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["label_image"], b["label_image"])
        # the VAE's batched matmuls round differently with other frames beside them (as in test_loader)
        np.testing.assert_allclose(a["latent"], b["latent"], rtol=1e-4, atol=1e-5)


def test_bad_image_settings_are_refused(caches, tmp_path):
    with pytest.raises(ValueError, match="use_image_num must be a non-negative integer"):
        CacheLoader(caches["numpy"], batch_size=2, use_image_num=-1, **CLIP)
    one = write_synthetic_cache(tmp_path / "one", videos=1, frames=8, latent=4)
    CacheLoader(one, batch_size=1, **CLIP)  # fine without images
    with pytest.raises(ValueError, match="use_image_num 2 .*1 usable video"):
        CacheLoader(one, batch_size=1, use_image_num=2, **CLIP)


# ------------------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_joint_training_resumes_bit_identically_and_samples_videos_only(caches, tmp_path):
    """6 steps in one go, and 3 + resume + 3, with images, accumulation, an fp16 loss scale and recompute:
    the same losses and state. Then `latte sample` of the joint-trained checkpoint
    makes plain videos (use_image_num 0) of num_frames frames."""
    options = dict(gradient_accumulation_steps=2, amp_level="O2", dtype="fp16", init_loss_scale=1024, scale_window=2,
                   num_parallel_workers=2, use_recompute=True)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    result = _train(_config(tmp_path, **options), "--cache", str(caches["numpy"]), "--output-dir", str(whole),
                    "--max-steps", "6")
    assert result.exit_code == 0, result.output
    config = _config(tmp_path, "parts.yaml", **options)
    assert _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(parts), "--max-steps", "3").exit_code == 0
    result = _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(parts), "--max-steps", "6", "--resume")
    assert result.exit_code == 0, result.output
    assert [r["loss"] for r in _log(parts)] == [r["loss"] for r in _log(whole)]
    assert _log(whole)[0]["frames_per_s"] == pytest.approx(_log(whole)[0]["samples_per_s"] * (4 + I), rel=1e-2)
    expected, got = _state(whole / "ckpt" / "step-00000006"), _state(parts / "ckpt" / "step-00000006")
    assert set(expected) == set(got)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    state = json.loads((whole / "ckpt" / "step-00000006" / "state.json").read_text())
    assert state["loader"]["use_image_num"] == I and state["config"]["image_video_joint"]

    out = tmp_path / "samples"
    result = CliRunner().invoke(main, ["sample", "--checkpoint", str(whole / "ckpt" / "step-00000006"), "--vae",
                                       str(caches["vae"]), "--steps", "3", "--num-videos", "2", "--batch-size", "2",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert [np.load(out / f"sample_00{i}.npy").shape for i in range(2)] == [(4, 4, 8, 8)] * 2


@pytest.mark.slow
def test_a_tiny_joint_run_learns(caches, tmp_path):
    """A 2-block Latte on 4 frames + 3 images of the 7-clip cache: the loss over all 7 frames falls from
    ~1 to below 0.4 (mean of the last 20 of 200 steps; measured 0.2-0.3)."""
    run = tmp_path / "run"
    config = _config(tmp_path, start_learning_rate=2e-3, train_batch_size=7, use_ema=False, ckpt_save_interval=200,
                     hidden_size=96)
    result = _train(config, "--cache", str(caches["numpy"]), "--output-dir", str(run), "--max-steps", "200")
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in _log(run)]
    assert np.mean(losses[:5]) > 0.8 and np.mean(losses[-20:]) < 0.4, (losses[:5], losses[-20:])


def test_class_conditional_joint_training(tmp_path):
    """Image labels come from the images' own videos; each is dropped on its own draw. With block-wise
    attention (enable_flash_attention on CPU) over the F + I frames."""
    cache = write_synthetic_cache(tmp_path / "labelled", videos=6, frames=12, latent=4, shard_videos=2, chunk_frames=4)
    run = tmp_path / "run"
    result = _train(_config(tmp_path, condition="class", num_classes=10, class_dropout_prob=0.5,
                            enable_flash_attention=True), "--cache", str(cache),
                    "--output-dir", str(run), "--max-steps", "3")
    assert result.exit_code == 0, result.output
    assert len(_log(run)) == 3 and all(np.isfinite(r["loss"]) for r in _log(run))
    from latte_toolkit.train.loop import diffusion_draws
    _, _, drop, drop_image = diffusion_draws(np.arange(400), 0, 0, (1,), 1000, 0.5, I)
    assert drop_image.shape == (400, I) and 0.4 < drop_image.mean() < 0.6  # 1200 draws of p = 0.5
    assert (drop_image != drop_image[:, :1]).any(axis=1).mean() > 0.5  # not one decision per sample
    _, _, drop_alone, no_images = diffusion_draws(np.arange(400), 0, 0, (1,), 1000, 0.5)
    np.testing.assert_array_equal(drop_alone, drop)  # image draws come after the video's: those are unchanged
    assert no_images.shape == (400, 0)


@pytest.mark.parametrize("keys, message", [
    ({"use_image_num": -1}, "use_image_num must be"),
    ({"use_image_num": 0}, "image_video_joint True with use_image_num 0"),
    ({"image_video_joint": False}, "image_video_joint False with use_image_num 3"),
    ({"use_image_num": None}, "image_video_joint True with use_image_num None"),
    ({"condition": "text"}, "needs caption embeddings"),
])
def test_bad_joint_keys_are_one_error_naming_the_key(caches, tmp_path, keys, message):
    run = tmp_path / "run"
    result = _train(_config(tmp_path, **keys), "--cache", str(caches["numpy"]), "--output-dir", str(run))
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("Error:") == 1 and not run.exists()


def test_joint_runs_the_data_cannot_feed_are_refused_before_anything_is_written(caches, tmp_path):
    run = tmp_path / "run"
    unlabelled = _train(_config(tmp_path, condition="class", num_classes=3), "--cache", str(caches["numpy"]),
                        "--output-dir", str(run))
    assert unlabelled.exit_code == 2 and "condition class with use_image_num 3 needs a class label" in unlabelled.output
    one = write_synthetic_cache(tmp_path / "one", videos=1, frames=8, latent=4)
    alone = _train(_config(tmp_path, train_batch_size=1), "--cache", str(one), "--output-dir", str(run))
    assert alone.exit_code == 2 and "use_image_num 3 takes images from videos other than" in alone.output
    from_option = _train(_config(tmp_path, image_video_joint=False, use_image_num=None), "--cache", str(caches["numpy"]),
                         "--output-dir", str(run), "--use-image-num", "2")
    assert from_option.exit_code == 2 and "image_video_joint False with use_image_num 2" in from_option.output
    assert not run.exists()


def test_shipped_joint_configs():
    from conftest import ROOT
    from latte_toolkit.train.config import load_train_config
    sky = load_train_config(str(ROOT / "configs/training/sky_image_video.yaml"), {"data_folder": "sky_train"})
    assert (sky["model_name"], sky["num_frames"], sky["use_image_num"], sky["image_video_joint"]) == \
        ("Latte-XL/2", 16, 8, True)
    assert (sky["train_batch_size"], sky["sample_stride"], sky["optim_eps"]) == (4, 3, 1e-6)
    tiny = load_train_config(str(ROOT / "configs/training/tiny_cpu_image_video.yaml"), {"data_folder": "cache"})
    assert (tiny["num_frames"], tiny["use_image_num"]) == (8, 4)


def test_bench_loader_takes_images(caches):
    result = CliRunner().invoke(main, ["bench", "loader", str(caches["parquet"]), "--batch", "2", "--num-frames", "4",
                                       "--workers", "1", "--images", "2"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["use_image_num"] == 2 and figures["loader"]["samples"] > 0
    # bench step --images: tests/pipelines/test_cli.py's bench step test runs the joint step
