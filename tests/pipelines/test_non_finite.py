"""Non-finite values never reach a cache or a training step unnamed: a VAE or text encoder whose outputs
pass float16's range fails those videos (a failure row naming the input and the dtype) or, for the empty
prompt every uncaptioned video shares, the job (one Error line); `latte report --verify` finds them in a
cache written before the check; `latte train` stops at the first such batch naming its videos."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from latte_core import TextEncoder
from latte_core.atomic import sha256_of
from latte_toolkit.datasets.cache import NULL_TEXT_FILE, TEXT_ENCODER_FILE
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.fixtures import write_synthetic_cache

from media import one_error_line, snapshot, write_captioned_clips

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")
ENV = {**os.environ, "GLOG_v": "3"}
CAPTIONS = ["clouds drifting left", None, "a red square moving"]


def _scaled_copy(source, target, weights_file, change):
    """A copy of a model folder whose weights `change(state)` edits in place."""
    shutil.copytree(source, target)
    path = target / weights_file
    state = load_file(path)
    change(state)
    save_file(state, path)
    return target


@pytest.fixture(scope="module")
def sources(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("non_finite")
    captions = write_captioned_clips(root / "src", CAPTIONS, [6] * len(CAPTIONS), height=32, width=32)
    run_ingest([captions], root / "ingest", workers=0, progress=False)

    def wide_mean(state):  # the posterior mean's rows of quant_conv x 1e9: most latents pass 65504
        state["quant_conv.weight"][:4] *= 1e9
    vae = _scaled_copy(fixtures_dir / "vae" / "vae_small_diffusers", root / "wide_vae",
                       "diffusion_pytorch_model.safetensors", wide_mean)
    text = fixtures_dir / "text" / "clip_text_small"
    clouds = TextEncoder.from_pretrained(text).tokenize(["clouds"])[0][1]

    def huge_token(state):
        # "clouds" embedded along dimension 0 alone, and the final LayerNorm's dimension-0 gain at 2e4: the
        # normalised value there is sqrt(31) = 5.6 at that word and below 1.7 at every position of the
        # other prompts (measured): x 2e4 passes float16's 65504 for "clouds" captions only
        state["embeddings.token_embedding.weight"][clouds] = 0
        state["embeddings.token_embedding.weight"][clouds, 0] = 1e4
        state["final_layer_norm.weight"][0] = 2e4

    def wide_output(state):  # every output x 1e6, the empty prompt's too
        state["final_layer_norm.weight"] *= 1e6
    return {"root": root, "manifest": root / "ingest", "wide_vae": vae,
            "vae": fixtures_dir / "vae" / "vae_small_diffusers",
            "nan_word": _scaled_copy(text, root / "nan_word", "text_encoder/model.safetensors", huge_token),
            "wide_text": _scaled_copy(text, root / "wide_text", "text_encoder/model.safetensors", wide_output)}


def _cache(sources, out, vae, *extra):
    return subprocess.run([LATTE, "cache", "--manifest", str(sources["manifest"]), "--vae", str(vae), "--out",
                           str(out), "--image-size", "32", "--workers", "0", "--shard-videos", "2",
                           "--micro-batch", "4", *extra], capture_output=True, text=True, env=ENV, timeout=600)


def _failures(out):
    return {row["video_id"]: row for row in pq.read_table(out / "failures.parquet").to_pylist()}


def test_latents_past_float16_fail_each_video_naming_it_and_the_dtype(sources, tmp_path):
    before = snapshot(sources["root"])
    done = _cache(sources, tmp_path / "f16", sources["wide_vae"])
    assert done.returncode == 1, done.stdout + done.stderr  # finished, with failed inputs
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr
    failures = _failures(tmp_path / "f16")
    assert sorted(failures) == [f"clip_{i}.mp4" for i in range(3)]  # one row per video, nothing stored
    for video_id, row in failures.items():
        assert row["category"] == "non-finite"
        assert row["message"].startswith(f"{row['path']}: its latents of frames 0-3: ")
        assert "not finite in float16" in row["message"] and "--dtype float32" in row["message"]
    assert pq.read_table(tmp_path / "f16" / "index.parquet").num_rows == 0
    # float32 holds those latents: the same VAE caches every video, and --verify finds them finite
    done = _cache(sources, tmp_path / "f32", sources["wide_vae"], "--dtype", "float32")
    assert done.returncode == 0, done.stdout + done.stderr
    assert pq.read_table(tmp_path / "f32" / "index.parquet").num_rows == 3
    report = subprocess.run([LATTE, "report", str(tmp_path / "f32"), "--verify", "--json"], capture_output=True,
                            text=True, env=ENV, timeout=300)
    assert report.returncode == 0 and json.loads(report.stdout)["non_finite"] == []
    assert snapshot(sources["root"]) == before


def test_a_caption_whose_embedding_is_not_finite_fails_its_video_only(sources, tmp_path):
    before = snapshot(sources["root"])
    out = tmp_path / "cache"
    done = _cache(sources, out, sources["vae"], "--text-encoder", str(sources["nan_word"]))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr
    failures = _failures(out)
    assert list(failures) == ["clip_0.mp4"]  # "clouds drifting left"; the uncaptioned and the other cache
    message = failures["clip_0.mp4"]["message"]
    assert failures["clip_0.mp4"]["category"] == "non-finite"
    assert "its caption 'clouds drifting left''s embedding" in message and "in float16" in message
    assert sorted(row["video_id"] for row in pq.read_table(out / "index.parquet").to_pylist()) == [
        "clip_1.mp4", "clip_2.mp4"]
    assert snapshot(sources["root"]) == before


def test_an_empty_prompt_past_float16_is_one_error_naming_the_encoder(sources, tmp_path):
    before = snapshot(sources["root"])
    out = tmp_path / "cache"
    done = _cache(sources, out, sources["vae"], "--text-encoder", str(sources["wide_text"]))
    line = one_error_line(done, 2, sources["wide_text"], "empty prompt embedding", "float16", "--dtype float32")
    assert len(line) < 400
    assert not os.path.exists(out / "empty_prompt_embedding.npy") and not os.listdir(out / "shards")
    assert snapshot(sources["root"]) == before


@pytest.fixture
def older_cache(tmp_path):
    """Two videos of four frames, v0000001's first frame inf: a cache written before `latte cache`
    refused such values (its shards match their ledger checksums)."""
    return write_synthetic_cache(tmp_path / "cache", videos=2, frames=4, latent=4, shard_videos=2, chunk_frames=4,
                                 non_finite=("v0000001",))


def test_report_verify_names_the_non_finite_videos(older_cache):
    before = snapshot(older_cache)
    done = subprocess.run([LATTE, "report", str(older_cache), "--verify"], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line.strip() for line in done.stdout.splitlines() if "NON-FINITE" in line]
    assert lines == ["NON-FINITE v0000001: 64 of 256 mean values, 64 of 256 std values are not finite"]
    assert "CORRUPT" not in done.stdout  # the bytes are the ledger's: only the values are wrong
    figures = json.loads(subprocess.run([LATTE, "report", str(older_cache), "--verify", "--json"],
                                        capture_output=True, text=True, env=ENV, timeout=300).stdout)
    assert figures["non_finite"] == [lines[0][len("NON-FINITE "):]] and figures["corrupt_shards"] == []
    assert snapshot(older_cache) == before


def test_training_on_an_older_cache_stops_naming_the_first_non_finite_batchs_video(older_cache, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model_name": "Latte-S/2", "depth": 2, "hidden_size": 32, "num_heads": 2, "image_size": 32,
        "num_frames": 4, "dtype": "fp32", "amp_level": "O0", "train_data_type": "numpy", "train_batch_size": 2,
        "use_ema": False, "step_mode": True, "ckpt_save_interval": 1, "seed": 0, "epochs": 1}))
    before = snapshot(older_cache)
    run = tmp_path / "run"
    done = subprocess.run([LATTE, "train", "-c", str(config), "--cache", str(older_cache), "--output-dir", str(run)],
                          cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600)
    line = one_error_line(done, 2, "step 1:", "v0000001", str(older_cache), "latte cache")
    assert "v0000000" not in line  # the batch's other video is finite
    assert snapshot(older_cache) == before
    assert not (run / "ckpt").exists() or not os.listdir(run / "ckpt")  # no step was taken, nothing saved
    assert not (run / "train_log.jsonl").exists() or (run / "train_log.jsonl").read_text() == ""


def test_report_verify_names_a_non_finite_empty_prompt_embedding_of_an_older_cache(sources, fixtures_dir, tmp_path):
    """An older text cache whose empty prompt's embedding holds inf (its sha256 recorded as it is)."""
    out = tmp_path / "cache"
    done = _cache(sources, out, sources["vae"], "--text-encoder", str(fixtures_dir / "text" / "clip_text_small"))
    assert done.returncode == 0, done.stdout + done.stderr
    null = np.load(out / NULL_TEXT_FILE)
    null[0, :3] = np.inf
    np.save(out / NULL_TEXT_FILE, null)
    record = json.loads((out / TEXT_ENCODER_FILE).read_text())
    (out / TEXT_ENCODER_FILE).write_text(json.dumps({**record, "empty_prompt_sha256": sha256_of(out / NULL_TEXT_FILE)}))
    before = snapshot(out)
    report = subprocess.run([LATTE, "report", str(out), "--verify"], capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert report.returncode == 1, report.stdout + report.stderr
    assert [line.strip() for line in report.stdout.splitlines() if "NON-FINITE" in line] == [
        f"NON-FINITE {NULL_TEXT_FILE}: 3 of {null.size} embedding values are not finite"]
    assert snapshot(out) == before
