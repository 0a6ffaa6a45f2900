"""Reading a latent cache folder written by `latte cache`, whatever its format.

    CACHE/cache.json       the fingerprint: everything that changes the stored bytes
    CACHE/index.parquet    video_id -> shard, offset, frames, label, caption
    CACHE/shards/<shard>/  one folder per shard, in the format's layout (formats.py, *_format.py)
    CACHE/ledger.jsonl, CACHE/failures.parquet, CACHE/units/ (job bookkeeping)

A cache made with a text encoder (`latte cache --text-encoder DIR`) also holds:
    cache.json             text_encoder_sha256, text_embed_dim (D), text_max_length (77)
    shards/<shard>/        each video's caption embedding (77, D) in the cache dtype: the per-video
                           array `caption_embedding` of its format (a video without a caption has the
                           empty prompt's)
    empty_prompt_embedding.npy   the empty prompt's (77, D), once: the null condition of
                           classifier-free guidance
    text_encoder.json      the encoder's folder (as last run) and the sha256 of empty_prompt_embedding.npy
"""
import hashlib
import json
import os

import numpy as np
import pyarrow.parquet as pq

from latte_core.atomic import sha256_of
from latte_core.errors import UserError
from latte_core.text_identity import TextEncoderIdentity

from .formats import get_format

POSTERIOR_FIELDS = ("mean", "std")
SAMPLE_FIELDS = ("sample",)
CAPTION_EMBEDDING = "caption_embedding"  # the per-video array of a text cache
NULL_TEXT_FILE = "empty_prompt_embedding.npy"
TEXT_ENCODER_FILE = "text_encoder.json"


class CorruptCache(UserError):
    """A shard disagrees with the ledger and the loader was told to stop (on_corrupt="raise")."""


class CorruptTextEmbedding(UserError):
    """A cached text embedding disagrees with its checksum, shape or dtype."""


def fields_for(store):
    if store not in ("posterior", "sample"):
        raise ValueError(f"store must be 'posterior' or 'sample', got {store!r}")
    return POSTERIOR_FIELDS if store == "posterior" else SAMPLE_FIELDS


def video_fields_for(info):
    """The per-video arrays a cache's shards hold, from its cache.json."""
    return (CAPTION_EMBEDDING,) if "text_encoder_sha256" in info else ()


def check_null_text_embedding(folder):
    """None when the cache's empty_prompt_embedding.npy has the sha256 text_encoder.json recorded for it
    (or the cache has no text), else the problem."""
    path = os.path.join(folder, NULL_TEXT_FILE)
    record_path = os.path.join(folder, TEXT_ENCODER_FILE)
    if not os.path.isfile(record_path):
        return f"{record_path} is missing" if os.path.isfile(path) else None
    try:
        with open(record_path) as handle:
            expected = json.load(handle)["empty_prompt_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{record_path} is not a record of the text encoder (restore it, or re-run latte cache)"
    if not os.path.isfile(path):
        return f"{path} is missing"
    digest = sha256_of(path)
    if digest != expected:
        return f"{path}: sha256 {digest[:12]}… differs from the {expected[:12]}… recorded in {TEXT_ENCODER_FILE}"
    return None


def non_finite_values(arrays):
    """"N of M <name> values, ..." of the arrays {name: array} that hold inf or NaN, or None."""
    found = []
    for name, array in arrays.items():
        bad = np.asarray(array).size - np.count_nonzero(np.isfinite(array))
        if bad:
            found.append(f"{bad} of {np.asarray(array).size} {name} values")
    return ", ".join(found) or None


def shard_reader(folder, info, entries, cache_bytes=256 << 20):
    """The format's Reader over the shards of the cache in `folder` (`info`: its cache.json)."""
    return get_format(info["format"]).Reader(
        os.path.join(folder, "shards"), entries, frame_fields=fields_for(info["store"]), dtype=np.dtype(info["dtype"]),
        chunk_frames=info["chunk_frames"], cache_bytes=cache_bytes)


def check_finite(folder, info, records, skip=()):
    """{video_id: problem} for the committed videos (the ledger's index rows, those of the shards in
    `skip` left out) whose stored latents or caption embedding hold inf or NaN: a cache written before
    `latte cache` refused them (outputs past float16's range store inf)."""
    entries = [row for record in records if record["unit_id"] not in skip for row in record.get("index", ())]
    reader = shard_reader(folder, info, entries)
    problems = {}
    for entry in entries:
        arrays = reader.read(entry)
        found = non_finite_values({name: arrays[name] for name in reader.frame_fields + video_fields_for(info)})
        if found:
            problems[entry["video_id"]] = f"{found} are not finite"
    return problems


class CacheReader:
    """`ids` (video ids, sorted) and `read(video_id)` -> {"mean", "std"} or {"sample"} arrays of shape
    (frames, C, h, w), plus "label" and "caption" (and the video's arrays when the cache has them).
    `reader` is the format's Reader over every shard (random frame reads: `reader.read_frames`);
    `cache_bytes` bounds the decoded row groups it keeps for Parquet shards of the earlier layout.

    Text caches: `has_text`; `text_encoder` the TextEncoderIdentity (path, sha256, width, max_length)
    of the encoder that made them (None without text); `caption_embedding(video)` (a video id or an index entry) -> (77, D) in the cache dtype;
    `null_text_embedding` -> (77, D), the empty prompt's, checked against its sha256
    (CorruptTextEmbedding, a UserError)."""

    def __init__(self, folder, cache_bytes=256 << 20):
        self.folder = os.fspath(folder)
        info_path = os.path.join(self.folder, "cache.json")
        index_path = os.path.join(self.folder, "index.parquet")
        if not os.path.isfile(info_path) or not os.path.isfile(index_path):
            raise FileNotFoundError(f"{self.folder}: not a finished cache (no cache.json / index.parquet)")
        with open(info_path) as handle:
            self.info = json.load(handle)
        self.fields = fields_for(self.info["store"])
        self.dtype = np.dtype(self.info["dtype"])
        self.entries = {row["video_id"]: row for row in pq.read_table(index_path).to_pylist()}
        self.ids = sorted(self.entries)
        self.reader = shard_reader(self.folder, self.info, self.entries.values(), cache_bytes)

        self.has_text = bool(video_fields_for(self.info))
        self._null_text_embedding = None

    def __len__(self):
        return len(self.ids)

    def _entry(self, video):
        entry = video if isinstance(video, dict) else self.entries.get(video)
        if entry is None:
            raise KeyError(f"{self.folder}: no video {video!r} in the cache")
        return entry

    def read(self, video_id):
        return self.reader.read(self._entry(video_id))

    @property
    def text_encoder(self):
        if not self.has_text:
            return None
        with open(os.path.join(self.folder, TEXT_ENCODER_FILE)) as handle:
            path = json.load(handle)["path"]
        return TextEncoderIdentity(path, self.info["text_encoder_sha256"], self.info["text_embed_dim"],
                                   self.info["text_max_length"])

    def _require_text(self):
        if not self.has_text:
            raise ValueError(f"{self.folder}: the cache holds no caption embeddings (made without "
                             f"--text-encoder); re-run latte cache with --text-encoder into a new folder")

    def _check_embedding(self, array, what):
        shape = (self.info["text_max_length"], self.info["text_embed_dim"])
        if array.shape != shape or array.dtype != self.dtype:
            raise CorruptTextEmbedding(f"{self.folder}: {what} is {array.dtype} {array.shape}, the cache's "
                                       f"is {self.dtype} {shape}")
        return array

    def caption_embedding(self, video):
        """The caption embedding (77, D) of a video (its id, or its index entry)."""
        self._require_text()
        entry = self._entry(video)
        return self._check_embedding(self.reader.video_array(entry, CAPTION_EMBEDDING),
                                     f"the caption embedding of {entry['video_id']!r}")

    @property
    def null_text_embedding(self):
        """The empty prompt's embedding (77, D), read once and checked against text_encoder.json."""
        self._require_text()
        if self._null_text_embedding is None:
            problem = check_null_text_embedding(self.folder)
            if problem:
                raise CorruptTextEmbedding(problem)
            self._null_text_embedding = self._check_embedding(np.load(os.path.join(self.folder, NULL_TEXT_FILE)),
                                                              NULL_TEXT_FILE)
        return self._null_text_embedding


def open_cache(folder, cache_bytes=256 << 20):
    return CacheReader(folder, cache_bytes)


def read_ledger(folder):
    """The complete records of `folder/ledger.jsonl`, read-only: a line a running or killed job has
    not finished (no newline yet) is ignored, never cut, so readers can run beside a job. A finished
    line that is not a JSON record (the file was edited or damaged) raises UserError naming the file
    and the line: no reader can tell which units it meant."""
    path = os.path.join(folder, "ledger.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    records = []
    for number, line in enumerate(data[:data.rfind(b"\n") + 1].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            reason = f"is not valid JSON ({err.msg} at column {err.colno})"
        except ValueError:  # bytes that are not UTF-8
            reason = "is not valid JSON (not UTF-8 text)"
        else:
            if isinstance(record, dict) and "unit_id" in record:
                records.append(record)
                continue
            reason = "is not a unit record (a JSON object with a unit_id)"
        raise UserError(f"{path}: line {number} {reason}; the ledger was modified or damaged: restore it, "
                        f"or delete that line to redo its unit")
    return records


def shard_digest(folder):
    """sha256 over a shard folder's files (names and bytes, in name order) and their total size."""
    digest, size = hashlib.sha256(), 0
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        digest.update(name.encode())
    return digest.hexdigest(), size


def shard_size(folder):
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())


INDEX_KEYS = ("video_id", "offset", "frames", "label", "caption")  # what a reader takes from an index row


def check_index(entries, records):
    """{shard id: problem} for the shards that index.parquet's rows (`entries`) name but the ledger never
    committed (an index from another job or cache), or whose rows differ from the ones the ledger committed
    for that shard (the index is built from the ledger, so a difference means either file was replaced)."""
    committed = {record["unit_id"]: record for record in records}
    rows_by_shard = {}
    for entry in entries:
        rows_by_shard.setdefault(entry["shard"], []).append(entry)
    problems = {}
    for shard, rows in rows_by_shard.items():
        record = committed.get(shard)
        if record is None:
            problems[shard] = "named by index.parquet, never committed to the ledger: the index is not this cache's"
            continue
        if "index" not in record:  # a ledger of the first layout: nothing to compare
            continue
        ours = sorted(tuple(row.get(key) for key in INDEX_KEYS) for row in rows)
        theirs = sorted(tuple(row.get(key) for key in INDEX_KEYS) for row in record["index"])
        if ours != theirs:
            problems[shard] = (f"index.parquet's {len(rows)} video(s) in it differ from the {len(theirs)} the "
                               f"ledger committed: restore index.parquet, or re-run latte cache to rebuild it")
    return problems


def check_cache(folder, entries, records, mode="full"):
    """check_shards and check_index in one {shard id: problem}; a shard with both problems gets both."""
    problems = check_shards(folder, records, mode)
    for shard, problem in check_index(entries, records).items():
        problems[shard] = f"{problems[shard]}; {problem}" if shard in problems else problem
    return problems


def unindexed_videos(entries, records):
    """How many committed videos index.parquet (`entries`) leaves out: their shards were committed after
    the index was written (a cache job still running) or the index is an earlier one."""
    named = {entry["shard"] for entry in entries}
    return sum(len(record.get("index", ())) for record in records if record["unit_id"] not in named)


def check_shards(folder, records, mode="full"):
    """{shard id: problem} for the ledger records whose shard is missing or whose size ("size") or
    size and sha256 ("full") differ from what the ledger recorded when the shard was committed."""
    if mode not in ("full", "size"):
        raise ValueError(f"shard check must be 'full' or 'size', got {mode!r}")
    problems = {}
    for record in records:
        shard = os.path.join(folder, "shards", record["unit_id"])
        if not os.path.isdir(shard):
            problems[record["unit_id"]] = "missing"
            continue
        if mode == "size":
            size, digest = shard_size(shard), record["sha256"]
        else:
            digest, size = shard_digest(shard)
        if size != record["bytes"] or digest != record["sha256"]:
            problems[record["unit_id"]] = (f"{size} bytes, sha256 {digest[:12]}… differ from the ledger's "
                                           f"{record['bytes']} bytes, {record['sha256'][:12]}…")
    return problems
