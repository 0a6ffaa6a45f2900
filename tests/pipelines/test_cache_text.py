"""Caption embeddings in the latent cache (`latte cache --text-encoder DIR`): every format round-trips
them, a shard encodes each distinct caption once, a video without a caption gets the empty prompt's,
resume, the fingerprint, `latte report --verify` and the loader's checks cover them."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from latte_core import TextEncoder
from latte_toolkit.tools.demo_text_encoder import write_random_text_encoder
from latte_toolkit.datasets.cache import (CAPTION_EMBEDDING, NULL_TEXT_FILE, CorruptCache, CorruptTextEmbedding,
                                          open_cache, read_ledger)
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.datasets.loader import CacheLoader
from latte_toolkit.pipelines.cache import CacheError, run_cache
from latte_toolkit.cli import main
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.pipelines.report import cache_report

from media import write_captioned_clips

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")
LONG_CAPTION = " ".join(["clouds drifting slowly over a grey sky"] * 14)  # over 77 tokens: truncated
CAPTIONS = ["clouds drifting left", "clouds drifting left", None, "Clouds drifting UP over a blue sky", LONG_CAPTION]
SHARD_VIDEOS = 2


def within_float16(stored, reference):
    """The stored float16 embedding against the float32 encoder's: float16 rounds to nearest (at most
    2^-11 of the value), and the cache's encoder call runs another batch shape than the reference's
    (float32 rounding, far below 1e-6 of the largest value)."""
    stored, reference = np.asarray(stored, np.float32), np.asarray(reference, np.float32)
    bound = 2.0 ** -11 * np.abs(reference) + 1e-6 * np.abs(reference).max()
    return stored.shape == reference.shape and bool((np.abs(stored - reference) <= bound).all())


class CountingTextEncoder(TextEncoder):
    """A real TextEncoder that records the prompts it tokenizes and the batches it runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts, self.batches = [], []

    def tokenize(self, prompts):
        self.prompts.append(list(prompts))
        return super().tokenize(prompts)

    def encode_ids(self, input_ids):
        self.batches.append(len(input_ids))
        return super().encode_ids(input_ids)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("cache_text")
    captions = write_captioned_clips(root / "src", CAPTIONS, [9 + 2 * i for i in range(len(CAPTIONS))])
    run_ingest([captions], root / "ingest", workers=0, progress=False)
    encoder_dir = fixtures_dir / "text" / "clip_text_small"
    counting = CountingTextEncoder.from_pretrained(encoder_dir)
    out = {"root": root, "manifest": root / "ingest", "vae": fixtures_dir / "vae" / "vae_small_diffusers",
           "encoder_dir": encoder_dir, "encoder": TextEncoder.from_pretrained(encoder_dir)}
    out["numpy_summary"] = _cache(out, root / "numpy", text_encoder=counting)
    out["prompts"], out["batches"] = list(counting.prompts), list(counting.batches)
    return out


def _cache(captioned, out, **kwargs):
    options = dict(fmt="numpy", image_size=32, workers=0, shard_videos=SHARD_VIDEOS, chunk_frames=4, micro_batch=4,
                   text_encoder=captioned["encoder_dir"], progress=False)
    options.update(kwargs)
    return run_cache(captioned["manifest"], captioned["vae"], out, **options)


def _text_cache(captioned, fmt):
    folder = captioned["root"] / fmt
    if not (folder / "index.parquet").exists():
        _cache(captioned, folder, fmt=fmt)
    return folder


def _assert_same_cache(first, second):
    a, b = open_cache(first), open_cache(second)
    assert a.ids == b.ids and a.has_text and b.has_text
    np.testing.assert_array_equal(a.null_text_embedding, b.null_text_embedding)
    for video_id in a.ids:
        x, y = a.read(video_id), b.read(video_id)
        for field in a.fields + (CAPTION_EMBEDDING,):
            np.testing.assert_array_equal(np.asarray(x[field]), np.asarray(y[field]))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_every_format_holds_the_caption_embeddings_of_the_encoder(captioned, fmt):
    cache = open_cache(_text_cache(captioned, fmt))
    encoder = captioned["encoder"]
    assert cache.has_text and cache.text_encoder == {"path": str(captioned["encoder_dir"]), "sha256": encoder.sha256,
                                                     "width": 32, "max_length": 77}
    with pytest.warns(UserWarning, match="truncated"):  # the long caption, as the cache job's own call
        reference = encoder.encode([caption or "" for caption in CAPTIONS])
    for i, video_id in enumerate(cache.ids):
        stored = cache.caption_embedding(video_id)
        assert stored.dtype == np.float16 and within_float16(stored, reference[i]), video_id
        np.testing.assert_array_equal(cache.read(video_id)[CAPTION_EMBEDDING], stored)
    assert within_float16(cache.null_text_embedding, reference[2])
    if fmt != "numpy":  # one encoder, one batch shape: the same bytes in every format
        _assert_same_cache(captioned["root"] / "numpy", captioned["root"] / fmt)


def test_a_cache_without_text_is_unchanged_and_the_latents_do_not_depend_on_text(captioned):
    plain = captioned["root"] / "plain"
    _cache(captioned, plain, text_encoder=None)
    text, no_text = open_cache(captioned["root"] / "numpy"), open_cache(plain)
    assert not no_text.has_text and no_text.text_encoder is None
    assert not any(key.startswith("text_") for key in no_text.info)
    assert not (plain / NULL_TEXT_FILE).exists()
    assert not [name for shard in (plain / "shards").iterdir() for name in os.listdir(shard)
                if CAPTION_EMBEDDING in name]
    assert all("text" not in record for record in read_ledger(plain))
    for video_id in text.ids:
        for field in text.fields:
            np.testing.assert_array_equal(np.asarray(text.read(video_id)[field]),
                                          np.asarray(no_text.read(video_id)[field]))
    with pytest.raises(ValueError, match="holds no caption embeddings"):
        no_text.caption_embedding(text.ids[0])


def test_identical_captions_are_encoded_once_per_shard(captioned):
    shards = [CAPTIONS[start:start + SHARD_VIDEOS] for start in range(0, len(CAPTIONS), SHARD_VIDEOS)]
    distinct = [list(dict.fromkeys(c for c in shard if c)) for shard in shards]
    assert captioned["prompts"] == [[""]] + distinct  # the empty prompt once, then each shard's distinct captions
    assert captioned["batches"] == [SHARD_VIDEOS] * len(captioned["prompts"])  # one call each, one shape
    records = read_ledger(captioned["root"] / "numpy")
    assert sum(record["text"]["captions_encoded"] for record in records) == sum(map(len, distinct))


def test_a_video_without_a_caption_gets_the_empty_prompt_and_is_counted(captioned):
    cache = open_cache(captioned["root"] / "numpy")
    uncaptioned = [video_id for video_id in cache.ids if cache.entries[video_id]["caption"] is None]
    assert uncaptioned == ["clip_2.mp4"]
    np.testing.assert_array_equal(cache.caption_embedding("clip_2.mp4"), cache.null_text_embedding)
    assert captioned["numpy_summary"]["without_caption"] == 1
    report = cache_report(captioned["root"] / "numpy")
    assert report["text"]["videos_without_caption"] == 1 and report["text"]["width"] == 32
    result = CliRunner().invoke(main, ["report", str(captioned["root"] / "numpy"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["text"]["videos_without_caption"] == 1
    result = CliRunner().invoke(main, ["report", str(captioned["root"] / "numpy")])
    assert result.exit_code == 0 and "32-wide caption embeddings" in result.output
    assert "1 videos without a caption" in result.output


def _cache_command(captioned, out):
    return [LATTE, "cache", "--manifest", str(captioned["manifest"]), "--vae", str(captioned["vae"]), "--out", str(out),
            "--format", "parquet", "--image-size", "32", "--workers", "0", "--shard-videos", "1", "--chunk-frames", "4",
            "--micro-batch", "4", "--text-encoder", str(captioned["encoder_dir"])]


@pytest.mark.slow
def test_killed_then_resumed_gives_the_uninterrupted_cache(captioned, tmp_path):
    reference = tmp_path / "reference"
    _cache(captioned, reference, fmt="parquet", shard_videos=1)
    out = tmp_path / "out"
    ledger = out / "ledger.jsonl"
    proc = subprocess.Popen(_cache_command(captioned, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and ledger.read_text().count("\n") >= 1:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ledger.read_text().count("\n")
    assert 1 <= done < len(CAPTIONS)
    result = subprocess.run(_cache_command(captioned, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"{len(CAPTIONS) - done} shards run, {done} already done" in result.stdout
    assert "1 videos without a caption" in result.stdout
    _assert_same_cache(reference, out)
    assert cache_report(out, verify=True)["corrupt_shards"] == []


def test_another_encoder_is_refused_and_a_broken_one_writes_nothing(captioned, tmp_path):
    out = captioned["root"] / "numpy"
    before = sorted(os.listdir(out)), (out / "ledger.jsonl").read_bytes()
    tokenizer = captioned["encoder_dir"] / "tokenizer"
    same_width = write_random_text_encoder(tmp_path / "same_width", tokenizer / "vocab.json", tokenizer / "merges.txt",
                                           hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(CacheError, match="text_encoder_sha256 differ"):
        _cache(captioned, out, text_encoder=same_width)
    narrow = write_random_text_encoder(tmp_path / "narrow", tokenizer / "vocab.json", tokenizer / "merges.txt",
                                       hidden_size=24, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(CacheError, match="caption embeddings 32 wide; the text encoder .* gives 24"):
        _cache(captioned, out, text_encoder=narrow)
    with pytest.raises(CacheError, match="text_embed_dim, text_encoder_sha256, text_max_length differ"):
        _cache(captioned, out, text_encoder=None)
    assert (sorted(os.listdir(out)), (out / "ledger.jsonl").read_bytes()) == before
    broken = tmp_path / "broken"
    shutil.copytree(captioned["encoder_dir"], broken)
    (broken / "tokenizer" / "merges.txt").unlink()
    result = CliRunner().invoke(main, ["cache", "--manifest", str(captioned["manifest"]), "--vae",
                                       str(captioned["vae"]), "--out", str(tmp_path / "new"), "--image-size", "32",
                                       "--workers", "0", "--text-encoder", str(broken)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "tokenizer/merges.txt" in errors[0], result.output
    assert not (tmp_path / "new").exists()


def _damage(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_a_damaged_embedding_is_detected_by_verify_and_the_loader(captioned, tmp_path, fmt):
    folder = tmp_path / fmt
    shutil.copytree(_text_cache(captioned, fmt), folder)
    cache = open_cache(folder)
    entry = cache.entries["clip_3.mp4"]
    shard = folder / "shards" / entry["shard"]
    _damage(shard / f"{entry['offset']}.{CAPTION_EMBEDDING}.npy" if fmt == "numpy" else
            next(shard.glob("extras.*")))
    result = CliRunner().invoke(main, ["report", str(folder), "--verify"])
    assert result.exit_code == 1 and f"CORRUPT {entry['shard']}" in result.output
    with pytest.raises(CorruptCache, match=entry["shard"]):
        CacheLoader(folder, batch_size=1, num_frames=4, on_corrupt="raise")
    _damage(folder / NULL_TEXT_FILE)
    assert any("empty prompt" in line for line in cache_report(folder, verify=True)["corrupt_shards"])
    with pytest.raises(CorruptTextEmbedding, match="sha256"):
        open_cache(folder).null_text_embedding
