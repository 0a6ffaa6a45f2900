"""The streaming loader: random clips of cached latents in batches, reproducible and exactly resumable.

    cache folder ─ index + ledger check (a shard whose size, sha256 or index rows differ from the
    │              ledger's is reported, then skipped or fatal: `on_corrupt`)
    └ epoch plan = f(seed, epoch): `clips_per_video` clips per video from random first frames; shards
    │   visited in a seeded order, clips shuffled within windows of `shuffle_window` shards (the bounded
    │   shuffle buffer); global batches of batch_size × world_size, of which rank r takes slice r
    └ a MindSpore pipeline from the rank's position in the plan, through the format's Reader
    │   (datasets/formats.py): num_parallel_workers threads each read a sample's frames (read_frames,
    │   and read_single_frames for its images) and sample its posterior, handed over in plan order
    └ per clip: frames start, start + stride, …; latent = (mean + std·ε)·scaling_factor with ε from a
      generator seeded by (seed, epoch, plan position): reproducible, different every epoch
      (posterior="mean": mean·scaling_factor, for VAEs whose posterior noise would swamp the signal)
      → batches {"latent": (B, F, C, h, w) float32, "label": (B,) int32 (-1: none), "index": (B,) int64}
    └ with use_image_num = I > 0 (image-video joint training, "Latte + IMG"): each clip gets I single
      frames appended, each a random frame of a random other video of the whole cache (never the clip's
      own; with replacement; every rank draws from all videos), chosen and posterior-sampled by generators
      seeded by (seed, epoch, plan position) as the clip is: "latent" (B, F + I, C, h, w), the images last,
      and "label_image" (B, I) int32, each image's own video's class. images_of(position, ...) names
      the images' videos (their captions are in loader.image_entries).
    └ with caption embeddings (CacheLoader(captions=True) from a cache made with --text-encoder, or
      VideoLoader(text_encoder=...)): "caption_embedding" (B, 77, D) float32, the clip's video's, and with
      images "caption_embedding_image" (B, I, 77, D), each image's own video's; `null_caption_embedding`
      is the empty prompt's (the null condition the training loop's caption dropout puts in their place)
      and `text_encoder` the TextEncoderIdentity (path, sha256, width, max_length) of the encoder that made
      them.

`state_dict()` is {"epoch", "position", ...settings that fix the plan}; `position` counts samples of the
global plan already handed out, so a loader restored from it yields exactly the batches an
uninterrupted run would have, whatever num_parallel_workers is, and a run restarted with another
world size continues the same plan spread over the new ranks.
"""
import contextlib
import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import mindspore.dataset as ds
import numpy as np

from latte_core.errors import UserError, first_line, is_integer

from .cache import CorruptCache, check_cache, check_index, open_cache, read_ledger, unindexed_videos
from .video import UnusableInput, center_crop_resize, read_clip_frames, read_manifest, to_pixels

logger = logging.getLogger(__name__)

POSTERIOR_MODES = ("sample", "mean")
PLAN_KEYS = ("seed", "num_frames", "sample_stride", "clips_per_video", "shuffle", "shuffle_window", "videos")
# A GeneratorDataset row costs 0.1-0.5 ms of CPU whatever its size (its thread hand-offs; 0.1 ms on a
# Zen 4 EPYC) and a fixed share of the workers' time at its ends: the cached path's rows hold this many
# batches, which the iterator hands out one by one; its pipeline queues PREFETCH_ROWS rows, the batches
# MindSpore's default 16-row queue held at 4 batches a row (the same memory).
BATCHES_PER_ROW = 8
PREFETCH_ROWS = 8
IMAGE_STREAM = 2  # keeps the image draws apart from the clip's noise (and the loop's diffusion stream, 1)


def _longest(videos, key):
    frames = [v[key] or 0 for v in videos]
    return f"the longest video has {max(frames)} frames" if frames else "there is no usable video"


def clip_span(num_frames, sample_stride):
    """Frames a clip covers from its first to its last frame."""
    return (num_frames - 1) * sample_stride + 1


class ClipPlan:
    """Which clip every position of an epoch holds: a pure function of (seed, epoch) and the videos.

    frames: frames per video; groups: the shard of each video (the unit of the bounded shuffle)."""

    def __init__(self, frames, groups, num_frames, sample_stride=1, clips_per_video=1, seed=0, shuffle=True,
                 shuffle_window=4):
        if min(num_frames, sample_stride, clips_per_video, shuffle_window) < 1:
            raise ValueError("num_frames, sample_stride, clips_per_video and shuffle_window must be positive")
        self.frames = np.asarray(frames, np.int64)
        self.groups = np.asarray(groups, np.int64)
        self.num_frames, self.sample_stride = num_frames, sample_stride
        self.clips_per_video, self.seed = clips_per_video, seed
        self.shuffle, self.shuffle_window = shuffle, shuffle_window
        self.span = clip_span(num_frames, sample_stride)
        self.size = len(self.frames) * clips_per_video

    def epoch(self, epoch):
        """(video, first frame) arrays in the epoch's order."""
        rng = np.random.default_rng([self.seed, epoch])
        video = np.repeat(np.arange(len(self.frames)), self.clips_per_video)
        start = rng.integers(0, self.frames[video] - self.span + 1)
        if self.shuffle:
            groups = self.groups[video]
            visit = np.empty(self.groups.max() + 1, np.int64)
            visit[rng.permutation(len(visit))] = np.arange(len(visit))
            order = np.lexsort((rng.random(len(video)), visit[groups] // self.shuffle_window))
            video, start = video[order], start[order]
        return video, start

    def frame_indices(self, start):
        return start + self.sample_stride * np.arange(self.num_frames)


class _ClipLoader:
    """Epochs, positions and rank slices; subclasses turn plan positions into batches."""

    def __init__(self, plan, batch_size, rank, world_size, num_parallel_workers, video_ids, posterior="sample",
                 use_image_num=0, image_entries=(), image_pool_of_video=None, text_encoder=None):
        if posterior not in POSTERIOR_MODES:
            raise ValueError(f"posterior must be one of {POSTERIOR_MODES}, got {posterior!r}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if num_parallel_workers < 1 or num_parallel_workers > (os.cpu_count() or 1):
            raise ValueError(f"num_parallel_workers must be 1..{os.cpu_count()} on this machine, "
                             f"got {num_parallel_workers}")
        self.plan = plan
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_parallel_workers = num_parallel_workers
        self.video_ids = video_ids
        self.posterior = posterior
        self.epoch, self.position = 0, 0
        self.use_image_num = use_image_num
        self.image_entries = list(image_entries)  # the videos images come from: every usable one
        self.image_frames = np.array([e["frames"] for e in self.image_entries], np.int64)
        self.image_pool_of_video = image_pool_of_video  # plan video -> its place in image_entries
        self.text_encoder = text_encoder  # the TextEncoderIdentity of the caption embeddings' encoder, or None
        self.columns = ["latent", "label", "index"] + (["label_image"] if use_image_num else [])
        if text_encoder is not None:
            self.columns += ["caption_embedding"] + (["caption_embedding_image"] if use_image_num else [])
        if self.batches_per_epoch == 0:
            raise ValueError(f"{plan.size} clips per epoch ({len(video_ids)} videos long enough for a clip x "
                             f"clips_per_video {plan.clips_per_video}) do not fill one global batch of "
                             f"train_batch_size {batch_size} x {world_size} ranks")

    @property
    def batches_per_epoch(self):
        """Batches each rank gets per epoch (all ranks the same: the plan's remainder is dropped)."""
        return self.plan.size // (self.batch_size * self.world_size)

    def state_dict(self):
        state = {"epoch": self.epoch, "position": self.position}
        state.update({key: getattr(self.plan, key) for key in PLAN_KEYS if key != "videos"})
        state["videos"] = len(self.video_ids)
        if self.use_image_num:  # absent: 0 (the states saved before images existed)
            state["use_image_num"] = self.use_image_num
        return state

    def load_state_dict(self, state):
        mine = {"use_image_num": 0, **self.state_dict()}
        state = {"use_image_num": 0, **state}
        changed = [key for key in PLAN_KEYS + ("use_image_num",) if state.get(key) != mine[key]]
        if changed:
            raise ValueError(f"the loader state was saved with other settings ({', '.join(changed)}: "
                             f"{[state.get(k) for k in changed]} vs {[mine[k] for k in changed]}); cannot resume")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.plan.size:
            raise ValueError(f"the loader state holds epoch {epoch}, position {position}: not a place in a plan of "
                             f"{self.plan.size} clips per epoch; cannot resume")
        self.epoch, self.position = epoch, position
        self._roll_over_if_done()

    def _roll_over_if_done(self):
        """A position with no whole global batch left (the end of an epoch: a state saved after its last
        batch) is the start of the next epoch, where an uninterrupted run goes on."""
        if (self.plan.size - self.position) // (self.batch_size * self.world_size) == 0:
            self.epoch, self.position = self.epoch + 1, 0

    def __len__(self):
        return self.batches_per_epoch

    def rank_positions(self):
        """Plan positions this rank reads from the current position to the end of the epoch."""
        step = self.batch_size * self.world_size
        batches = (self.plan.size - self.position) // step
        first = self.position + self.rank * self.batch_size
        starts = first + step * np.arange(batches)
        return (starts[:, None] + np.arange(self.batch_size)).reshape(-1)

    def __iter__(self):
        """The rest of the current epoch; then the state moves to the next epoch."""
        self._roll_over_if_done()  # never a pipeline over zero batches (MindSpore refuses an empty source)
        video, start = self.plan.epoch(self.epoch)
        positions = self.rank_positions()
        step = self.batch_size * self.world_size
        for batch in self._batches(video, start, positions):
            self.position += step
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def latent(self, arrays, position, stream=(), out=None):
        """The latent of plan position `position` from a clip's cached arrays {field: (F, C, h, w)}, in the
        model's space (× self.scaling_factor, which each loader sets from its cache or VAE), float32, into
        `out` if given. `stream` (IMAGE_STREAM,) draws the noise of the position's images instead of its
        clip's."""
        if out is None:
            out = np.empty(next(iter(arrays.values())).shape, np.float32)
        scale = np.float32(self.scaling_factor)
        if "sample" in arrays or self.posterior == "mean":
            # dtype: with a scalar, numpy 1.x would multiply a float16 array in float16
            np.multiply(arrays["sample" if "sample" in arrays else "mean"], scale, out=out, dtype=np.float32)
        else:  # in place, no temporaries: (mean + std·ε)·scaling_factor
            rng = np.random.default_rng([self.plan.seed, self.epoch, int(position), *stream])
            rng.standard_normal(out=out, dtype=np.float32)
            with np.errstate(invalid="ignore"):  # inf - inf of an older cache: the training loop names its video
                out *= arrays["std"]
                out += arrays["mean"]
            out *= scale
        return out

    def images_of(self, position, video):
        """(places in image_entries, frame indices) of the use_image_num images of plan position
        `position`, whose clip is of plan video `video`: videos drawn with replacement from every video
        but the clip's own, then a frame of each."""
        rng = np.random.default_rng([self.plan.seed, IMAGE_STREAM, self.epoch, int(position)])
        own = self.image_pool_of_video[video]
        others = rng.integers(0, len(self.image_entries) - 1, self.use_image_num)
        others += others >= own  # skip the clip's own video
        return others, rng.integers(0, self.image_frames[others])

    def sample_videos(self, position):
        """The video ids of the sample at plan position `position` of the current epoch: its clip's,
        then its images' (for messages naming a batch's videos)."""
        video = self.plan.epoch(self.epoch)[0][position]
        ids = [self.video_ids[video]]
        if self.use_image_num:
            ids += [self.image_entries[i]["video_id"] for i in self.images_of(position, video)[0]]
        return ids

    def sample_latent(self, clip_arrays, position, image_arrays=None, out=None):
        """The latent (F [+ I], C, h, w) float32 of plan position `position`: its clip's, then its images'
        (each drawn from its own stream), computed into one array (`out` if given)."""
        if image_arrays is None:
            return self.latent(clip_arrays, position, out=out)
        frames, first_image = len(next(iter(clip_arrays.values()))), next(iter(image_arrays.values()))
        latent = np.empty((frames + len(first_image),) + first_image.shape[1:], np.float32) if out is None else out
        self.latent(clip_arrays, position, out=latent[:frames])
        self.latent(image_arrays, position, (IMAGE_STREAM,), out=latent[frames:])
        return latent

    def _finished_sample(self, clip_arrays, entry, position, images, latent=None):
        """A sample's columns: latent (F [+ I], C, h, w), label, position, then with images their labels
        (I,), and with caption embeddings the clip's (77, D) [and the images' (I, 77, D)].
        clip_arrays: the clip's {field: (F, C, h, w)}; images: (places in image_entries, {field: (I, C, h,
        w)}), or None without images; latent: the array to compute the latent into, if given."""
        others, image_arrays = images if self.use_image_num else ((), None)
        extras = ()
        if self.use_image_num:
            extras += (np.array([_label(self.image_entries[i]) for i in others], np.int32),)
        if self.text_encoder is not None:
            extras += (self.caption_embedding(entry),)
            if self.use_image_num:
                extras += (np.stack([self.caption_embedding(self.image_entries[i]) for i in others]),)
        return (self.sample_latent(clip_arrays, position, image_arrays, latent), np.int32(_label(entry)),
                np.int64(position)) + extras

    def caption_embedding(self, entry):
        """The caption embedding (77, D) float32 of a video (an entry of `entries` or `image_entries`)."""
        raise NotImplementedError

    def _batches(self, video, start, positions):
        raise NotImplementedError


_PREFETCH_SETTING = threading.Lock()  # two loaders building at once must not restore each other's setting


@contextlib.contextmanager
def _prefetch_size(rows):
    """MindSpore's queue size for the pipelines built inside (a global setting, read as an iterator is
    built; restored at once), or its default with rows None."""
    with _PREFETCH_SETTING:
        previous = ds.config.get_prefetch_size()
        if rows is not None:
            ds.config.set_prefetch_size(rows)
        try:
            yield
        finally:
            ds.config.set_prefetch_size(previous)


def _dataset_rows(dataset, failures, prefetch_rows=None):
    """The rows of a GeneratorDataset (numpy), MindSpore queueing `prefetch_rows` of them (None: its
    default). Its source runs in MindSpore's threads, and MindSpore re-raises a source's error as a
    RuntimeError whose one message embeds its Python traceback and C++ stack: a source records its
    error in `failures` instead, and it is raised here as it was, after the rows before it."""
    try:
        with _prefetch_size(prefetch_rows):
            rows = dataset.create_dict_iterator(num_epochs=1, output_numpy=True)
        yield from rows
    except RuntimeError:
        if not failures:
            raise
    if failures:
        raise failures[0] from None


def _recording(source, failures):
    """A generator function running `source()`, whose first error ends it and is kept in `failures`."""
    def run():
        try:
            yield from source()
        except Exception as err:
            failures.append(err)
    return run


def _dataset_batches(dataset, columns, batch_size, failures):
    """The batches of a dataset whose rows each hold one or more whole batches (views, no copy)."""
    for row in _dataset_rows(dataset, failures, PREFETCH_ROWS):
        for first in range(0, len(row[columns[0]]), batch_size):
            yield {column: row[column][first:first + batch_size] for column in columns}


def _label(entry):
    return -1 if entry["label"] is None else entry["label"]


def _check_image_num(use_image_num, videos, where):
    if not is_integer(use_image_num) or use_image_num < 0:
        raise ValueError(f"use_image_num must be a non-negative integer, got {use_image_num!r}")
    if use_image_num and videos < 2:
        raise ValueError(f"{where}: use_image_num {use_image_num} takes images from videos other than the "
                         f"clip's, and there is {videos} usable video")


def _sample_rows(make_sample, items, row_size, workers):
    """Rows of `row_size` samples (the last may be shorter), make_sample(*item, latent) of each item,
    stacked, in item order. A row's latents are computed straight into one (row_size, ...) float32
    array (once the first row, stacked, has shown their shape): the row's largest column is never
    copied. With several workers, a row is one task per worker thread, the threads taking its samples
    in turn (a thread hand-off per task, not per sample), and the next row's tasks are queued before
    the current row is handed on, so the workers need not wait for the consuming thread (numpy's
    Gaussian draws and array arithmetic release the GIL). The first error in item order is raised
    after the rows before it."""
    items = iter(items)
    shape = []

    def fill(row, slots, claims, results):
        while (place := next(claims)) < len(row):
            try:
                results[place] = make_sample(*row[place], slots[place])
            except Exception as err:  # every later place is claimed by another thread or left unset
                results[place] = err
                return

    def start(pool, row):
        latents = np.empty((len(row),) + shape[0], np.float32) if shape else None
        slots = [None] * len(row) if latents is None else list(latents)
        results, claims = [None] * len(row), itertools.count()
        if pool is None:
            fill(row, slots, claims, results)
            return latents, slots, results, ()
        return latents, slots, results, [pool.submit(fill, row, slots, claims, results) for _ in range(workers)]

    def finish(latents, slots, results, tasks):
        for task in tasks:
            task.result()
        for result in results:
            if isinstance(result, Exception):
                raise result
        if not shape:
            shape.append(results[0][0].shape)
        columns = list(zip(*results))
        # a latent computed into its slot is that slot itself (the identity check costs nothing)
        in_place = latents is not None and all(a is b for a, b in zip(columns[0], slots))
        return (latents if in_place else np.stack(columns[0]),) + tuple(np.stack(c) for c in columns[1:])

    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        pending = None
        while row := list(itertools.islice(items, row_size)):
            if pending is not None and not shape:  # the first row's latents size the rest
                yield finish(*pending)
                pending = None
            current = start(pool, row)
            if pending is not None:
                yield finish(*pending)
            pending = current
        if pending is not None:
            yield finish(*pending)


def _stack(samples):
    """Samples (tuples of arrays) -> one tuple of batched arrays. A dataset row per batch, not per
    sample: MindSpore's per-row cost would otherwise add to each sample's."""
    return tuple(np.stack(column) for column in zip(*samples))


class CacheLoader(_ClipLoader):
    """Batches of clips from a cache folder written by `latte cache`, in any of its formats.

    on_corrupt: "skip" (report and leave out shards that disagree with the ledger) or "raise";
    check: "full" (sha256 of every shard when the loader is built) or "size" (file sizes only).
    cache_bytes bounds the decoded row groups kept in memory for Parquet shards of the earlier layout
    (several chunk rows per row group, or compressed); every other shard is read frame by frame.
    captions: True adds each sample's caption embeddings (the cache's, as float32; a cache made with
    --text-encoder); the empty prompt's is read, and checked, when the loader is built.
    stream: a datasets.storage.ShardStream for a cache in an object store (`cache_dir` then the local folder
    stream_cache made, holding its tables): the shards are fetched as this rank's plan needs them, each
    checked against the ledger as it arrives (not hashed at start), and the same batches come as from a
    local copy. Images (use_image_num) read random frames of the whole cache: refused there.
    """

    def __init__(self, cache_dir, batch_size, num_frames, sample_stride=1, clips_per_video=1, seed=0, rank=0,
                 world_size=1, shuffle=True, shuffle_window=4, num_parallel_workers=1, on_corrupt="skip",
                 check="full", cache_bytes=256 << 20, posterior="sample", use_image_num=0, captions=False,
                 stream=None):
        if on_corrupt not in ("skip", "raise"):
            raise ValueError(f"on_corrupt must be 'skip' or 'raise', got {on_corrupt!r}")
        if stream is not None and use_image_num:
            raise UserError(f"{stream.store.url}: use_image_num reads random frames of the whole cache, which the "
                            f"streaming loader of an object store does not fetch; copy the cache to a local folder "
                            f"for image-video training")
        self.stream = stream
        self.cache = open_cache(cache_dir, cache_bytes)
        if posterior == "mean" and "mean" not in self.cache.fields:
            raise ValueError(f"{self.cache.folder}: posterior='mean' needs a cache of the posterior "
                             f"(latent cache --store posterior); this one stores {self.cache.info['store']!r}")
        self.fields = ("mean",) if posterior == "mean" else self.cache.fields  # the fields a clip reads
        self.folder = self.cache.folder
        self.scaling_factor = self.cache.info["scaling_factor"]
        text_encoder = None
        if captions:  # ValueError for a cache without text, CorruptTextEmbedding for a damaged null embedding
            self.null_caption_embedding = self.cache.null_text_embedding.astype(np.float32)
            text_encoder = self.cache.text_encoder
        records = read_ledger(self.folder)
        if stream is None:
            self.corrupt = check_cache(self.folder, self.cache.entries.values(), records, check)
        else:  # each shard is checked as it is fetched; the index against the ledger here
            self.corrupt = check_index(self.cache.entries.values(), records)
        unindexed = unindexed_videos(self.cache.entries.values(), records)
        if unindexed:
            logger.warning("%s: %d committed videos are not in index.parquet (a cache job still running, or an "
                           "earlier index): they are left out until latte cache finishes", self.folder, unindexed)
        for shard, problem in sorted(self.corrupt.items()):
            logger.error("%s: shard %s disagrees with the ledger (%s)", self.folder, shard, problem)
        if self.corrupt and on_corrupt == "raise":
            raise CorruptCache(f"{self.folder}: {len(self.corrupt)} shard(s) disagree with the ledger: "
                               + "; ".join(f"{k}: {v}" for k, v in sorted(self.corrupt.items()))
                               + " (on_corrupt: raise; on_corrupt: skip leaves their videos out)")
        span = clip_span(num_frames, sample_stride)
        entries = [self.cache.entries[video_id] for video_id in self.cache.ids]
        usable = [e for e in entries if e["shard"] not in self.corrupt]
        self.skipped_corrupt = len(entries) - len(usable)
        self.entries = [e for e in usable if e["frames"] >= span]
        self.skipped_short = len(usable) - len(self.entries)
        if self.skipped_short or self.skipped_corrupt:
            logger.warning("%s: %d videos shorter than a clip of %d frames (stride %d) and %d in corrupt shards "
                           "are skipped", self.folder, self.skipped_short, num_frames, sample_stride,
                           self.skipped_corrupt)
        if not self.entries:
            raise ValueError(f"{self.folder}: no video holds a clip of num_frames {num_frames} with sample_stride "
                             f"{sample_stride} ({span} frames); {_longest(usable, 'frames')}")
        self.shards = sorted({e["shard"] for e in self.entries})
        shard_number = {shard: i for i, shard in enumerate(self.shards)}
        _check_image_num(use_image_num, len(usable), self.folder)
        plan = ClipPlan([e["frames"] for e in self.entries], [shard_number[e["shard"]] for e in self.entries],
                        num_frames, sample_stride, clips_per_video, seed, shuffle, shuffle_window)
        pool = {e["video_id"]: i for i, e in enumerate(usable)}
        super().__init__(plan, batch_size, rank, world_size, num_parallel_workers,
                         [e["video_id"] for e in self.entries], posterior, use_image_num, usable,
                         np.array([pool[e["video_id"]] for e in self.entries], np.int64), text_encoder)

    def caption_embedding(self, entry):
        return self._read([entry["shard"]], self.cache.caption_embedding, entry).astype(np.float32)

    def _read(self, shards, read, *args):
        """read(*args) from the cache's shards; any error is a CorruptCache naming them: their files
        changed after the loader checked them against the ledger (e.g. truncated while a run reads)."""
        try:
            return read(*args)
        except Exception as err:
            folders = ", ".join(self.cache.reader.shard_folder(shard) for shard in sorted(set(shards)))
            raise CorruptCache(f"{folders}: cannot be read ({first_line(err)}); the shard changed after the loader "
                               f"checked it against the ledger: restore it (latte report --verify names what differs) or re-run "
                               f"latte cache, then resume") from None

    def _batches(self, video, start, positions):
        failures = []
        source = _recording(lambda: self._read_batches(video, start, positions), failures)
        dataset = ds.GeneratorDataset(source, column_names=self.columns, shuffle=False)
        return _dataset_batches(dataset, self.columns, self.batch_size, failures)

    def _read_batches(self, video, start, positions):
        """Rows of batches, each sample read (read_frames) and sampled on one of the workers' threads, in
        plan order (_sample_rows): one generator rather than a GeneratorDataset's parallel workers, which
        were 10-15 % slower here and at times several times slower."""
        if self.stream is not None:
            self.stream.schedule([self.entries[video[p]]["shard"] for p in positions])
        items = ((video[p], start[p], p) for p in positions)
        return _sample_rows(self._clip_sample, items, self.batch_size * BATCHES_PER_ROW, self.num_parallel_workers)

    def read_clip(self, entry, frame_indices):
        """{field: (F, C, h, w)} of one video's frames at `frame_indices`, in the cache dtype."""
        return self.cache.reader.read_frames(entry, frame_indices, self.fields)

    def _clip_sample(self, video, start, position, latent=None):
        if self.stream is None:
            return self._sample_of(video, start, position, latent)
        shard = self.entries[video]["shard"]
        self.stream.acquire(shard)
        try:
            return self._sample_of(video, start, position, latent)
        finally:
            self.stream.release(shard)

    def _sample_of(self, video, start, position, latent=None):
        entry = self.entries[video]
        images = None
        if self.use_image_num:
            others, indices = self.images_of(position, video)
            frames = [(self.image_entries[i], k) for i, k in zip(others, indices)]
            images = others, self._read([e["shard"] for e, _ in frames], self.cache.reader.read_single_frames,
                                        frames, self.fields)
        clip = self._read([entry["shard"]], self.read_clip, entry, self.plan.frame_indices(start))
        return self._finished_sample(clip, entry, position, images, latent)


class _PlanSource:
    """GeneratorDataset source: item k is the rank's k-th batch, make_sample(video, first frame, plan
    position) for each of its positions, stacked. An error is kept in `failures` (see _dataset_rows)."""

    def __init__(self, make_sample, video, start, positions, batch_size):
        self.make_sample, self.video, self.start = make_sample, video, start
        self.positions, self.batch_size = positions, batch_size
        self.failures = []

    def __len__(self):
        return len(self.positions) // self.batch_size

    def __getitem__(self, k):
        batch = self.positions[k * self.batch_size:(k + 1) * self.batch_size]
        try:
            return _stack([self.make_sample(self.video[p], self.start[p], p) for p in batch])
        except Exception as err:  # random access: MindSpore must hear of it too, or it would wait for item k
            self.failures.append(err)
            raise


class VideoLoader(_ClipLoader):
    """The uncached path behind the same API: clips decoded from the videos of an ingest manifest (or
    from the clips of a curate folder: each a video of its own, never sampled across its ends),
    center-cropped and resized to `image_size`, scaled to [-1, 1] and encoded by the VAE on the fly
    (in `micro_batch` frames at a time), then sampled from the posterior as the cached path does.

    text_encoder: a TextEncoder adds each sample's caption embeddings: the manifest's captions (the empty
    prompt for a video without one, as the cache does) are encoded when the loader is built, each
    distinct caption once, and kept in memory (77 x D float32 per distinct caption)."""

    def __init__(self, manifest, vae, batch_size, num_frames, sample_stride=1, image_size=256, clips_per_video=1,
                 seed=0, rank=0, world_size=1, shuffle=True, num_parallel_workers=1, micro_batch=8,
                 posterior="sample", use_image_num=0, text_encoder=None):
        rows = read_manifest(manifest, clips=True)
        span = clip_span(num_frames, sample_stride)
        self.entries = [row for row in rows if (row["num_frames"] or 0) >= span]
        self.skipped_short = len(rows) - len(self.entries)
        if self.skipped_short:
            logger.warning("%s: %d videos shorter than a clip of %d frames (stride %d) are skipped",
                           manifest, self.skipped_short, num_frames, sample_stride)
        if not self.entries:
            raise ValueError(f"{manifest}: no video holds a clip of num_frames {num_frames} with sample_stride "
                             f"{sample_stride} ({span} frames); {_longest(rows, 'num_frames')}")
        plan = ClipPlan([row["num_frames"] for row in self.entries], np.zeros(len(self.entries)), num_frames,
                        sample_stride, clips_per_video, seed, shuffle, shuffle_window=1)
        pool = [{**row, "frames": row["num_frames"]} for row in rows if row["num_frames"]]  # every decodable video
        _check_image_num(use_image_num, len(pool), manifest)
        place = {row["video_id"]: i for i, row in enumerate(pool)}
        record = None
        if text_encoder is not None:  # every video images may come from: the whole pool
            prompts = [row["caption"] if row["caption"] and row["caption"].strip() else "" for row in pool]
            distinct = list(dict.fromkeys(prompts + [""]))
            embeddings = dict(zip(distinct, text_encoder.encode(distinct)))
            self._caption_embeddings = {row["video_id"]: embeddings[p] for row, p in zip(pool, prompts)}
            self.null_caption_embedding = embeddings[""]
            record = text_encoder.identity
        super().__init__(plan, batch_size, rank, world_size, num_parallel_workers,
                         [row["video_id"] for row in self.entries], posterior, use_image_num, pool,
                         np.array([place[row["video_id"]] for row in self.entries], np.int64), record)
        self.vae, self.image_size, self.micro_batch = vae, image_size, micro_batch
        self.scaling_factor = vae.config["scaling_factor"]

    def caption_embedding(self, entry):
        return self._caption_embeddings[entry["video_id"]]

    def _batches(self, video, start, positions):
        source = _PlanSource(self._pixel_sample, video, start, positions, self.batch_size)
        columns = ["pixels", "index"] + (["image_places"] if self.use_image_num else [])
        dataset = ds.GeneratorDataset(source, column_names=columns, shuffle=False,
                                      num_parallel_workers=self.num_parallel_workers, python_multiprocessing=False)
        frames = self.plan.num_frames
        for row in _dataset_rows(dataset, source.failures):
            mean, std = self.vae.encode_video(row["pixels"], micro_batch=self.micro_batch)  # clip and images
            samples = []
            for k, position in enumerate(row["index"]):
                clip = {"mean": mean[k, :frames], "std": std[k, :frames]}
                images = (row["image_places"][k], {"mean": mean[k, frames:], "std": std[k, frames:]}) \
                    if self.use_image_num else None
                samples.append(self._finished_sample(clip, self.entries[video[position]], position, images))
            yield dict(zip(self.columns, _stack(samples)))

    def _pixel_sample(self, video, start, position):
        """The clip's frames (and its images', last) as VAE input, its position (and image places)."""
        entry = self.entries[video]
        frames = _decoded(entry, self.plan.frame_indices(start))
        places = ()
        if self.use_image_num:
            places, indices = self.images_of(position, video)
            for place, index in zip(places, indices):
                frames += _decoded(self.image_entries[place], [index])
        pixels = to_pixels([center_crop_resize(frame, self.image_size) for frame in frames])
        sample = (pixels, np.int64(position))
        return sample + ((np.asarray(places, np.int64),) if self.use_image_num else ())


def _decoded(entry, indices):
    """The frames at `indices` of a manifest row's video (counted from a curated clip's first frame, as the
    clip shows them: read_clip_frames), as a list; a file that no longer decodes as ingest found it is a
    UserError naming it."""
    try:
        return list(read_clip_frames(entry, indices))
    except UnusableInput as err:
        raise UserError(f"{err.message} (the file changed since latte ingest checked it: restore it, or ingest "
                        f"again)") from None
