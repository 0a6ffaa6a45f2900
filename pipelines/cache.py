"""Stage 2, cache: encode every video of a manifest once with the VAE into latent shards.

    manifest.parquet ─ plan ─▶ shards of `shard_videos` videos (sorted by video_id; id = hash of members)
      └ each shard (any runner, VAE loaded once per worker process):
          decode frames sequentially ─▶ center-crop + resize ─▶ [-1, 1] ─▶ VAE encode in micro-batches
          ─▶ posterior mean + std (or one sample) per frame ─▶ the format's Writer (datasets/formats.py)
          in shards/.staging-*/ ─▶ one rename to shards/<shard>/ ─▶ one ledger line (index rows inside)
      └ at the end: index.parquet and failures.parquet from the ledger

From a curate folder (clips.parquet), each clip is a cache video of its own id (its clip id), with its
video's label and caption, its frames inside the letterbox bars the curation crops; a shard holds
`shard_videos` whole videos, each decoded once for all its clips; curate.json joins the fingerprint.

With a text encoder (--text-encoder DIR), checked whole before the job starts: its sha256 and width
join the fingerprint; the empty prompt is encoded once, in this process, into
empty_prompt_embedding.npy (the null condition of classifier-free guidance); each shard encodes its
distinct captions in one call before its videos and stores every video's (77, D) caption embedding
as the per-video array `caption_embedding` (a video without a caption gets the empty prompt's).

Decoding runs in a thread ahead of the encoder (a bounded queue of micro-batches), and shards are
written as each video finishes, so decode, encode and write overlap.
"""
import hashlib
import json
import logging
import os
import shutil
import time

import mindspore as ms
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latte_core.atomic import sha256_of, write_atomically, write_json_atomically
from latte_core.checkpoint import CheckpointError
from latte_core.errors import DiskFull, UserError, bounded, first_line
from latte_core.kernels import blas_threads
from latte_core.text_encoder import TextEncoder, load_text_encoder
from latte_core.vae import load_vae
from latte_toolkit.datasets.cache import (CAPTION_EMBEDDING, NULL_TEXT_FILE, TEXT_ENCODER_FILE,
                                          check_null_text_embedding, fields_for, non_finite_values, shard_digest)
from latte_toolkit.datasets.formats import FORMAT_NAMES, get_format
from latte_toolkit.datasets.storage import is_url, local_copy, local_job_tables, normalized
from latte_toolkit.datasets.video import (UnusableInput, center_crop_resize, clip_picture, iter_frames,
                                          iter_frames_to_damage, read_manifest, to_pixels)

from .jobs import Job
from .ledger import is_disk_full
from .runners import check_workers, prefetch

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
CROP_RULE = "center-crop the short-edge square, bilinear resize to image_size (PIL), scale to [-1, 1]"
INDEX_SCHEMA = pa.schema([("video_id", pa.string()), ("shard", pa.string()), ("offset", pa.int32()),
                          ("frames", pa.int32()), ("label", pa.int64()), ("caption", pa.string())])
FAILURE_SCHEMA = pa.schema([("video_id", pa.string()), ("path", pa.string()), ("category", pa.string()),
                            ("message", pa.string())])


class CacheError(UserError):
    """Bad usage of the cache stage: a missing manifest or VAE, a folder of another cache."""


# ------------------------------------------------------------------------------------------ fingerprint
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def vae_fingerprint(vae_dir):
    """sha256 over the VAE folder's config and weights: a different VAE gives different latents."""
    digest = hashlib.sha256()
    if not os.path.isfile(os.path.join(vae_dir, "config.json")):
        raise CacheError(f"{vae_dir}: the VAE folder has no config.json (expected a diffusers AutoencoderKL "
                         f"folder: config.json + diffusion_pytorch_model.safetensors)")
    names = ["config.json"] + [n for n in VAE_WEIGHT_FILES if os.path.isfile(os.path.join(vae_dir, n))]
    if len(names) < 2:
        raise CacheError(f"{vae_dir}: the VAE folder has no diffusion_pytorch_model.safetensors or .bin")
    for name in names:
        digest.update(name.encode())
        try:
            digest.update(sha256_of(os.path.join(vae_dir, name)).encode())
        except OSError as err:
            raise CacheError(f"{os.path.join(vae_dir, name)}: cannot read the file ({err.strerror or err})") from None
    return digest.hexdigest()


def cache_fingerprint(vae_dir, image_size, store, dtype, fmt, chunk_frames, shard_videos, vae_config=None,
                      vae_sha256=None, text_encoder=None, curation=None):
    """The settings that determine the cache's content. `vae_config` / `vae_sha256`: those of the VAE
    the job validated (read from `vae_dir` when not given); `text_encoder`: the TextEncoder of a cache
    of caption embeddings (its keys are absent otherwise, so caches without text keep their bytes);
    `curation`: the curate.json of a cache of clips (absent for an ingest manifest's, likewise)."""
    if vae_config is None:
        vae_config = load_vae_checked(vae_dir).config
    fingerprint = {
        "version": CACHE_VERSION, "format": fmt, "vae_sha256": vae_sha256 or vae_fingerprint(vae_dir),
        "scaling_factor": vae_config["scaling_factor"], "latent_channels": vae_config["latent_channels"],
        "downsample_factor": 2 ** (len(vae_config["block_out_channels"]) - 1), "image_size": image_size,
        "crop": CROP_RULE, "store": store, "fields": list(fields_for(store)), "dtype": dtype,
        "chunk_frames": chunk_frames, "shard_videos": shard_videos,
    }
    if text_encoder is not None:
        identity = text_encoder.identity
        fingerprint.update(text_encoder_sha256=identity.sha256, text_embed_dim=identity.width,
                           text_max_length=identity.max_length)
    if curation is not None:
        fingerprint["curation"] = curation
    return fingerprint


def load_vae_checked(vae_dir):
    """The VAE of `vae_dir`, fully loaded: config keys and types, weights readable, every tensor present
    with its shape and finite. Any fault is a CacheError naming the folder or file."""
    try:
        return load_vae(vae_dir)
    except CheckpointError as err:
        raise CacheError(f"unusable VAE: {err}") from None


def non_finite_problem(arrays, dtype, encoder):
    """None when every array is finite, else why not: `arrays` are `encoder`'s outputs ("VAE", "text
    encoder") after the cast to the cache `dtype`; float16 stores inf past +-65504, which training
    would turn into a NaN loss at its first step."""
    found = non_finite_values(arrays)
    if not found:
        return None
    hint = (f"float16 holds up to ±65504: cache with --dtype float32, or use a {encoder} whose outputs stay "
            f"in that range" if dtype == "float16" else f"the {encoder}'s own outputs are not finite")
    return f"{found} are not finite in {dtype} ({hint})"


# ------------------------------------------------------------------------------------------ captions
_TEXT_ENCODERS = {}


def _text_encoder(identity):
    """The text encoder (the TextEncoderIdentity the job validated), loaded once per worker process;
    refused if its folder changed since the job validated it."""
    key = (identity.path, identity.sha256)
    if key not in _TEXT_ENCODERS:
        ms.set_context(mode=ms.GRAPH_MODE)
        _TEXT_ENCODERS[key] = load_text_encoder(identity.path, identity, recorded_by="the cache job validated",
                                                advice="; its folder changed since: re-run the job (this shard "
                                                       "was not written)")
    return _TEXT_ENCODERS[key]


def has_caption(caption):
    return caption is not None and bool(caption.strip())


def text_rows(encoder, shard_videos):
    """Rows of every text-encoder call of a job whose largest shard holds `shard_videos` videos: its
    distinct captions fit one call (up to the encoder's micro-batch), and one shape means one graph
    compiled per process (about 5 s for CLIP-L here, as long as encoding 20 captions)."""
    return min(encoder.micro_batch, 1 << (max(shard_videos, 1) - 1).bit_length())


def encode_prompts(encoder, prompts, rows, dtype):
    """(len(prompts), 77, D) in `dtype`. The ids are padded to a multiple of `rows` by repeating the
    last, so every call runs the one compiled shape; OpenBLAS runs on one thread, as for the VAE, so
    every runner stores the same bytes."""
    ids = encoder.tokenize(prompts)
    padded = np.concatenate([ids, np.repeat(ids[-1:], -len(ids) % rows, axis=0)])
    with blas_threads(1):
        hidden = encoder.encode_ids(padded)
    return hidden[:len(prompts)].astype(dtype)


def shard_caption_embeddings(spec):
    """{caption: (77, D)} of the shard's distinct captions (encoded in one call), how many, and seconds."""
    started = time.perf_counter()
    items = [item for video in spec["videos"] for item in video.get("clips", [video])]  # a curated video's clips
    captions = list(dict.fromkeys(item["caption"] for item in items if has_caption(item.get("caption"))))
    embeddings = {}
    if captions:
        text = spec["text"]
        encoder = _text_encoder(text["encoder"])
        embeddings = dict(zip(captions, encode_prompts(encoder, captions, text["rows"], spec["dtype"])))
    return embeddings, len(captions), time.perf_counter() - started


def _publish_null_text_embedding(out_dir, encoder, rows, dtype):
    """The empty prompt's embedding of the cache: the stored one when it checks (the committed shards'
    uncaptioned videos hold its bytes), else encoded now and written; then text_encoder.json records
    the encoder's folder and the file's sha256. Returns the array. A non-finite one is a CacheError
    before anything is written: uncaptioned videos store it, and caption dropout puts it in batches."""
    path = os.path.join(out_dir, NULL_TEXT_FILE)
    stored = os.path.isfile(os.path.join(out_dir, TEXT_ENCODER_FILE)) and check_null_text_embedding(out_dir) is None
    if stored:
        null = np.load(path)
    else:
        if os.path.exists(path):
            logger.warning("%s: %s; encoding the empty prompt again", out_dir, check_null_text_embedding(out_dir))
        null = encode_prompts(encoder, [""], rows, dtype)[0]
    problem = non_finite_problem({"empty prompt embedding": null}, dtype, "text encoder")
    if problem:
        raise CacheError(f"{path if stored else encoder.folder}: {problem}")
    if not stored:
        def save(tmp):
            with open(tmp, "wb") as handle:  # np.save would add .npy to the staging name
                np.save(handle, null)
        write_atomically(path, save)
    write_json_atomically(os.path.join(out_dir, TEXT_ENCODER_FILE),
                          {"path": encoder.folder, "empty_prompt_sha256": sha256_of(path)})
    return null


def _check_text_width(out_dir, encoder):
    """An existing cache's caption embeddings and this encoder's must have one width (named apart from
    the other fingerprint keys: it decides which models the cache can train)."""
    try:
        with open(os.path.join(out_dir, "cache.json")) as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        return  # a new folder, or one the job refuses with its own message
    width = previous.get("text_embed_dim") if isinstance(previous, dict) else None
    if width is not None and width != encoder.width:
        raise CacheError(f"{out_dir} holds caption embeddings {width} wide; the text encoder {encoder.folder} "
                         f"gives {encoder.width}: use that cache's encoder to resume, or a new --out folder")


# ------------------------------------------------------------------------------------------ the shard
_VAES = {}


def worker_vae(vae_dir, vae_sha256=None):
    """The VAE, loaded once per worker process (the transformer is never built here). With `vae_sha256`
    (the folder's fingerprint when the job validated it), a folder changed since then is refused: the
    cache's fingerprint would not describe its latents."""
    key = (vae_dir, vae_sha256)
    if key not in _VAES:
        if vae_sha256 is not None and vae_fingerprint(vae_dir) != vae_sha256:
            raise CacheError(f"{vae_dir}: the VAE folder changed since the cache job validated it; "
                             f"re-run the job (this shard was not written)")
        ms.set_context(mode=ms.GRAPH_MODE)
        _VAES[key] = load_vae_checked(vae_dir)
    return _VAES[key]


def _frame_batches(item, clips, image_size, micro_batch):
    """Decode the video once, in order, and for each of its clips (a manifest row is one clip of all its
    frames) crop + resize + normalise its frames: (N, 3, S, S) float32 batches, then None after each
    clip. Run ahead of the encoder in a thread (runners.prefetch)."""
    # a curated video's clips: from a file decord refuses as truncated too, as the curation read it
    frames = enumerate((iter_frames_to_damage if "clips" in item else iter_frames)(item["path"], item["kind"]))
    for clip in clips:
        start, end = clip.get("start_frame", 0), clip.get("end_frame")  # a manifest row: every frame
        batch = []
        shape = (clip["height"], clip["width"], 3)  # a manifest row's frame, or a curated clip's crop of it
        for index, frame in frames:
            if index < start:
                continue
            picture = clip_picture(frame, clip)
            if picture.shape != shape:  # never cropped and resized to fit: the cache would hold other pictures
                raise UnusableInput("unsupported", f"{item['path']}: frame {index} decodes to {frame.shape[1]}x"
                                                   f"{frame.shape[0]}, the manifest records {shape[1]}x{shape[0]} "
                                                   f"(a size that changes mid-stream, or a file changed since "
                                                   f"ingest: re-run latte ingest)")
            batch.append(center_crop_resize(picture, image_size))
            if len(batch) == micro_batch:
                yield to_pixels(batch)
                batch = []
            if end is not None and index + 1 == end:
                break
        else:
            if end is not None:
                raise UnusableInput("truncated", f"{item['path']}: the video ends before frame {end - 1}, "
                                                 f"the last of clip {clip['video_id']}")
        if batch:
            yield to_pixels(batch)
        yield None


def encode_clips(vae, item, spec, timings):
    """(clip, {field: (frames, C, h, w)} in the cache dtype, or the exception that failed it) for each clip
    of one video (`item["clips"]` of a curate folder; a manifest row is its own one clip), the video
    decoded once, in a thread ahead of the encoder. A decode error fails its clip and the video's later
    clips."""
    clips = item.get("clips", [item])
    batches = prefetch(_frame_batches(item, clips, spec["image_size"], spec["micro_batch"]), 4)
    try:
        for number, clip in enumerate(clips):
            try:
                arrays = _encode_batches(vae, clip, spec, timings, batches)
            except Exception as err:
                for failed in clips[number:]:
                    yield failed, err
                return
            yield clip, arrays
    finally:
        batches.close()


def _encode_batches(vae, item, spec, timings, batches):
    outputs = {field: [] for field in fields_for(spec["store"])}
    rng = np.random.default_rng([spec["seed"], int(hashlib.sha1(item["video_id"].encode()).hexdigest()[:8], 16)])
    while True:
        waited = time.perf_counter()
        batch = next(batches)
        timings["decode"] += time.perf_counter() - waited  # time the encoder waited for frames
        if batch is None:
            break
        started = time.perf_counter()
        count = len(batch)
        if count < spec["micro_batch"]:  # pad: graph mode would compile again for every new batch size
            batch = np.concatenate([batch, np.repeat(batch[-1:], spec["micro_batch"] - count, axis=0)])
        with blas_threads(1):  # OpenBLAS rounds by its thread count: the same bytes from every runner
            posterior = vae.encode(ms.Tensor(batch))
        if spec["store"] == "posterior":
            stored = {"mean": posterior.mean.asnumpy()[:count].astype(spec["dtype"]),
                      "std": posterior.std.asnumpy()[:count].astype(spec["dtype"])}
        else:  # one fixed draw, as MindONE's cache stores; seeded per video for reproducibility
            noise = rng.standard_normal((count,) + tuple(posterior.mean.shape[1:])).astype(np.float32)
            sample = posterior.mean.asnumpy()[:count] + posterior.std.asnumpy()[:count] * noise
            stored = {"sample": sample.astype(spec["dtype"])}
        problem = non_finite_problem(stored, spec["dtype"], "VAE")
        if problem:  # the first such batch fails the video: the rest is not encoded
            first = sum(len(part) for part in outputs[next(iter(outputs))])
            raise UnusableInput("non-finite", f"{item['path']}: its latents of frames {first}-{first + count - 1}: "
                                              f"{problem}")
        for field, array in stored.items():
            outputs[field].append(array)
        timings["encode"] += time.perf_counter() - started
    if not outputs[next(iter(outputs))]:
        raise ValueError(f"{item['path']}: no frames decoded")
    return {field: np.concatenate(parts) for field, parts in outputs.items()}


def cache_shard(spec):
    """Encode one shard's videos and commit shards/<shard_id>/; returns the ledger record."""
    vae = worker_vae(spec["vae_dir"], spec.get("vae_sha256"))
    timings = {"decode": 0.0, "encode": 0.0, "write": 0.0}
    text = shard_caption_embeddings(spec) if spec.get("text") else None

    def encoded():
        for item in spec["videos"]:
            counted = False  # the source file's bytes count once, with its first clip cached
            # a video in an object store is fetched to the scratch area for its clips, deleted after
            with local_copy(item["path"], item["kind"], spec.get("storage_options")) as local:
                decoded, named = _decoded_from(item, local)
                for clip, arrays in encode_clips(vae, decoded, spec, timings):  # one bad video fails it
                    clip = named.get(id(clip), clip)
                    if isinstance(arrays, Exception):
                        yield clip, _naming(arrays, local, item["path"]), 0
                    else:
                        yield clip, arrays, 0 if counted else _source_size(decoded)
                        counted = True

    return write_shard(spec, encoded(), timings, text)


def write_shard(spec, videos, timings, text=None):
    """Write (item, arrays | exception, source bytes) triples with the format's Writer, which commits
    shards/<unit_id>/ by one rename, and return the ledger record (index and failure rows inside).
    `text`: (caption embeddings, captions encoded, seconds) of shard_caption_embeddings, for a cache of
    caption embeddings."""
    final = os.path.join(spec["out_dir"], "shards", spec["unit_id"])
    fields = fields_for(spec["store"])
    latent = spec["image_size"] // spec["downsample_factor"]
    frame_nbytes = len(fields) * spec["latent_channels"] * latent * latent * np.dtype(spec["dtype"]).itemsize
    failures, source_bytes, items, without_caption = [], 0, [], 0
    try:
        with get_format(spec["format"]).Writer(final, frame_fields=fields, chunk_frames=spec["chunk_frames"],
                                               frame_nbytes=frame_nbytes,
                                               video_fields=(CAPTION_EMBEDDING,) if text else ()) as writer:
            for item, arrays, size in videos:
                if isinstance(arrays, UnusableInput):  # the decoder's own verdict, its message naming the file
                    failures.append({"video_id": item["video_id"], "path": item["path"],
                                     "category": arrays.category, "message": arrays.message[:300]})
                    continue
                if isinstance(arrays, Exception):
                    failures.append({"video_id": item["video_id"], "path": item["path"], "category": "unreadable",
                                     "message": f"{item['path']}: {first_line(arrays)}"})
                    continue
                started = time.perf_counter()
                video_arrays = None
                if text:
                    captioned = has_caption(item.get("caption"))
                    video_arrays = {CAPTION_EMBEDDING: text[0][item["caption"]] if captioned else spec["text"]["null"]}
                    problem = non_finite_problem(video_arrays, spec["dtype"], "text encoder")
                    if problem:  # the empty prompt's was checked when the job started: a caption's
                        failures.append({"video_id": item["video_id"], "path": item["path"], "category": "non-finite",
                                         "message": f"{item['path']}: its caption {bounded(item['caption'], 40)}'s "
                                                    f"embedding: {problem}"})
                        continue
                    without_caption += not captioned
                writer.add(arrays, label=item.get("label"), caption=item.get("caption"), arrays=video_arrays)
                timings["write"] += time.perf_counter() - started
                items.append(item)
                source_bytes += size
            started = time.perf_counter()
        digest, size = shard_digest(final)
        timings["write"] += time.perf_counter() - started
    except BaseException as err:
        if isinstance(err, Exception) and _disk_full(err, spec["out_dir"]):
            raise DiskFull(f"no space left on the device holding {spec['out_dir']} while writing shard "
                           f"{spec['unit_id']}; committed shards are intact, free space and re-run") from None
        raise
    index = [{"video_id": item["video_id"], "shard": spec["unit_id"], **video}
             for item, video in zip(items, writer.videos)]
    record = {"unit_id": spec["unit_id"], "videos": len(index), "failed": len(failures),
              "frames": sum(row["frames"] for row in index), "bytes": size, "sha256": digest,
              "disk_bytes": _allocated_bytes(final), "source_bytes": source_bytes,
              "seconds": {k: round(v, 4) for k, v in timings.items()}, "index": index, "failures": failures}
    if text:  # apart from the phases: the encoder's time, the distinct captions, the uncaptioned videos
        record["text"] = {"captions_encoded": text[1], "without_caption": without_caption,
                          "seconds": round(text[2], 4)}
    return record


def _decoded_from(item, local):
    """(the item as decoded from `local`, {id of each decoded clip: the clip as recorded}): a video fetched
    from an object store decodes from its local copy, and its rows and messages keep its URL."""
    if local == item["path"]:
        return item, {}
    if "clips" not in item:
        decoded = {**item, "path": local}
        return decoded, {id(decoded): item}
    clips = [{**clip, "path": local} for clip in item["clips"]]
    return {**item, "path": local, "clips": clips}, {id(c): o for c, o in zip(clips, item["clips"])}


def _naming(err, local, url):
    """An error about a fetched copy, its message naming the URL."""
    if local == url or local not in str(err):
        return err
    if isinstance(err, UnusableInput):
        return UnusableInput(err.category, err.message.replace(local, url))
    return RuntimeError(str(err).replace(local, url))


def _allocated_bytes(folder):
    """Bytes the shard occupies on disk (MindRecord files are sparse: apparent size overstates them)."""
    return sum(entry.stat().st_blocks * 512 for entry in os.scandir(folder) if entry.is_file())


def _disk_full(err, folder):
    """The ledger's test (ENOSPC/EDQUOT, or pyarrow's wording), plus MindRecord's own: its message says
    "No space left" or, once less than about a megabyte is free, "No free disk to be used"."""
    text = str(err)
    if is_disk_full(err) or "No space left" in text or "No free disk" in text:
        return True
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _source_size(item):
    if item["kind"] == "frames":
        return sum(entry.stat().st_size for entry in os.scandir(item["path"]) if entry.is_file())
    return os.path.getsize(item["path"])


# ------------------------------------------------------------------------------------------ the job
def _member_key(video):
    """What names a video in its shard's id (and a curated video's clips)."""
    key = [video["video_id"], video["path"], video["num_frames"]]
    return key + [[clip["video_id"] for clip in video["clips"]]] if "clips" in video else key


def cache_inputs(manifest):
    """(the videos to cache in video id order, the curate.json of a curate folder or None). From a curate
    folder each video carries its clips ("clips", cache videos of their own ids, in clip id order) and
    its "num_frames" is theirs together, so a shard holds whole videos and decodes each once."""
    rows = read_manifest(manifest, clips=True)
    settings = os.path.join(os.fspath(manifest), "curate.json")
    if not os.path.isfile(settings):
        return rows, None
    with open(settings) as handle:
        curation = json.load(handle)
    videos = {}
    for clip in rows:
        videos.setdefault(clip["source_video_id"], []).append(clip)
    return [{"video_id": video_id, "path": clips[0]["path"], "kind": clips[0]["kind"],
             "num_frames": sum(clip["num_frames"] for clip in clips), "clips": clips}
            for video_id, clips in sorted(videos.items())], curation


def publish_index(out_dir, records):
    """index.parquet and failures.parquet from the ledger records, sorted by video id; both lists."""
    index = sorted((row for record in records for row in record["index"]), key=lambda row: row["video_id"])
    failures = sorted((row for record in records for row in record["failures"]), key=lambda row: row["video_id"])
    write_atomically(os.path.join(out_dir, "index.parquet"),
                     lambda tmp: pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), tmp))
    write_atomically(os.path.join(out_dir, "failures.parquet"),
                     lambda tmp: pq.write_table(pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA), tmp))
    return index, failures


def run_cache(manifest, vae_dir, out_dir, fmt="numpy", image_size=256, dtype="float16", store="posterior",
              workers=0, scheduler=None, micro_batch=8, shard_videos=16, chunk_frames=16, skip_videos=0,
              seed=0, text_encoder=None, progress=True, storage_options=None, break_lock=False):
    """Run (or resume) the cache job; returns the summary dict. `text_encoder`: a text-encoder folder
    (or a TextEncoder read from one) whose caption embeddings the cache also stores. `manifest`, the
    manifest's videos and `out_dir` may be object-store URLs (datasets/storage.py: `storage_options`,
    `break_lock`)."""
    if fmt not in FORMAT_NAMES:
        raise CacheError(f"unknown format {fmt!r}; choose one of {', '.join(FORMAT_NAMES)}")
    if dtype not in ("float16", "float32"):
        raise CacheError(f"dtype must be float16 or float32, got {dtype!r}")
    if min(image_size, micro_batch, shard_videos, chunk_frames) < 1 or skip_videos < 0:
        raise CacheError("image_size, micro_batch, shard_videos and chunk_frames must be positive")
    check_workers(workers, CacheError)
    if not os.path.isdir(vae_dir):
        raise CacheError(f"{vae_dir}: no such VAE folder")
    started = time.perf_counter()
    out_dir = normalized(out_dir)
    vae_dir = os.path.abspath(vae_dir)
    if is_url(manifest):
        manifest = local_job_tables(manifest, storage_options)
    videos, curation = cache_inputs(manifest)
    videos = videos[skip_videos:]
    # the whole VAE (config and every weight) is checked here, before any shard runs or --out is made:
    # a broken VAE is one error, not a failure of every shard
    vae_sha256 = vae_fingerprint(vae_dir)
    vae = _VAES.get((vae_dir, vae_sha256))  # loaded from these same bytes by an earlier job in this process
    if vae is None:
        vae = load_vae_checked(vae_dir)
    if scheduler is None and workers == 0:  # the shards run here and use this copy, in graph mode as in a worker
        for key in [key for key in _VAES if key[0] == vae_dir]:
            del _VAES[key]
        ms.set_context(mode=ms.GRAPH_MODE)
        _VAES[(vae_dir, vae_sha256)] = vae
    encoder = _checked_text_encoder(text_encoder, in_process=scheduler is None and workers == 0)
    if encoder is not None and not is_url(out_dir):  # in a store, the fingerprint's width is compared
        _check_text_width(out_dir, encoder)
    fingerprint = cache_fingerprint(vae_dir, image_size, store, dtype, fmt, chunk_frames, shard_videos,
                                    vae_config=vae.config, vae_sha256=vae_sha256, text_encoder=encoder,
                                    curation=curation)
    del vae
    if image_size % fingerprint["downsample_factor"]:
        raise CacheError(f"image_size {image_size} is not a multiple of the VAE's {fingerprint['downsample_factor']}")
    with Job(out_dir, "cache.json", fingerprint, "shards", CacheError, storage_options=storage_options,
             unit_paths=lambda record: [f"shards/{record['unit_id']}"], break_lock=break_lock) as job:
        work_dir = job.work_dir  # out_dir itself, or the local scratch of an object-store job
        text = None
        if encoder is not None:
            rows = text_rows(encoder, min(shard_videos, len(videos)))
            null = job.publish(lambda: _publish_null_text_embedding(work_dir, encoder, rows, dtype),
                               f"writing {NULL_TEXT_FILE}", outputs=(NULL_TEXT_FILE, TEXT_ENCODER_FILE))
            text = {"encoder": encoder.identity, "rows": rows, "null": null}
            del encoder  # the shards use the workers' copies (in this process: _TEXT_ENCODERS')
        setup_seconds = time.perf_counter() - started
        pending, skipped = job.plan(videos, shard_videos, _member_key, "s", "videos")
        logger.info("%d videos in %d shards: %d already cached", len(videos), skipped + len(pending), skipped)
        common = {"out_dir": work_dir, "storage_options": storage_options, "vae_dir": vae_dir, "vae_sha256": vae_sha256, "format": fmt,
                  "image_size": image_size, "dtype": dtype, "store": store, "micro_batch": micro_batch,
                  "chunk_frames": chunk_frames, "seed": seed, "latent_channels": fingerprint["latent_channels"],
                  "downsample_factor": fingerprint["downsample_factor"], "text": text}
        specs = [{**shard, **common} for shard in pending]
        errors = job.run(cache_shard, specs, lambda spec: sum(v["num_frames"] or 0 for v in spec["videos"]),
                         "cache", "frame", workers, scheduler, progress)
        records = job.records()
        index, failures = job.publish(lambda: publish_index(work_dir, records),
                                      "writing index.parquet and failures.parquet",
                                      outputs=("failures.parquet", "index.parquet"))
    # a shard that raised (e.g. its worker could not load the VAE) cached none of its videos: they count
    # as failed; the shard is not in the ledger, so a re-run retries it
    raised = [spec for spec in specs if spec["unit_id"] in set(errors)]
    raised_videos = sum(len(spec["videos"]) for spec in raised)
    if raised:
        logger.error("%d shard(s) raised, their %d video(s) are not cached (re-run to retry): %s",
                     len(raised), raised_videos, ", ".join(spec["unit_id"] for spec in raised))
    seconds = time.perf_counter() - started
    run_frames = sum(r["frames"] for r in records if r["unit_id"] in {s["unit_id"] for s in specs})
    summary = {"out_dir": out_dir, "videos": len(index), "failed": len(failures) + raised_videos,
               "frames": sum(r["frames"] for r in index), "shards_run": len(specs), "shards_skipped": skipped,
               "shard_errors": errors, "shard_error_videos": raised_videos, "seconds": round(seconds, 2),
               "setup_seconds": round(setup_seconds, 2),
               "frames_per_s": round(run_frames / seconds, 3) if specs else 0.0}
    if text:
        summary["without_caption"] = sum(r["text"]["without_caption"] for r in records)
    return summary


def _checked_text_encoder(text_encoder, in_process):
    """The job's TextEncoder (None without one), loaded whole before anything is written. `in_process`:
    the shards run in this process and use this copy (or an earlier job's compiled one of the same
    bytes)."""
    if text_encoder is None:
        return None
    if isinstance(text_encoder, TextEncoder):
        if text_encoder.folder is None or text_encoder.sha256 is None:
            raise CacheError("the text encoder must be read from a folder (TextEncoder.from_pretrained): the "
                             "cache records its folder and sha256")
        encoder, given = text_encoder, True
    else:
        encoder, given = load_text_encoder(os.fspath(text_encoder)), False
    key = (encoder.folder, encoder.sha256)
    if in_process:
        if given or key not in _TEXT_ENCODERS:
            for stale in [k for k in _TEXT_ENCODERS if k[0] == encoder.folder]:
                del _TEXT_ENCODERS[stale]
            _TEXT_ENCODERS[key] = encoder
        return _TEXT_ENCODERS[key]
    return encoder
