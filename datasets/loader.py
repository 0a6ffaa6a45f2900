"""The streaming loader: random clips of cached latents in batches, reproducible and exactly resumable.

    cache folder ─ index + ledger check (a shard whose size or sha256 differs is reported, then
    │              skipped or fatal: `on_corrupt`)
    └ epoch plan = f(seed, epoch): `clips_per_video` clips per video from random first frames; shards
    │   visited in a seeded order, clips shuffled within windows of `shuffle_window` shards (the bounded
    │   shuffle buffer); global batches of batch_size × world_size, of which rank r takes slice r
    └ a MindSpore pipeline from the rank's position in the plan:
    │   numpy, parquet: GeneratorDataset over a random-access clip source (num_parallel_workers threads)
    │   mindrecord:     MindDataset(SubsetSampler(the chunk rows of each clip)) reassembled into clips
    └ per clip: frames start, start + stride, …; latent = (mean + std·ε)·scaling_factor with ε from a
      generator seeded by (seed, epoch, plan position): reproducible, different every epoch
      (posterior="mean": mean·scaling_factor, for VAEs whose posterior noise would swamp the signal)
      → batches {"latent": (B, F, C, h, w) float32, "label": (B,) int32 (-1: none), "index": (B,) int64}

`state_dict()` is {"epoch", "position", ...settings that fix the plan}; `position` counts samples of the
global plan already handed out, so a loader restored from it yields exactly the batches an
uninterrupted run would have, whatever num_parallel_workers is, and a run restarted with another
world size continues the same plan spread over the new ranks.
"""
import collections
import logging
import math
import os
import threading

import numpy as np
import pyarrow as pa

from latte_core.errors import UserError

from . import mindrecord_format, numpy_format, parquet_format
from .cache import check_shards, open_cache, read_ledger

logger = logging.getLogger(__name__)

POSTERIOR_MODES = ("sample", "mean")
PLAN_KEYS = ("seed", "num_frames", "sample_stride", "clips_per_video", "shuffle", "shuffle_window", "videos")


class CorruptCache(UserError):
    """A shard disagrees with the ledger and the loader was told to stop (on_corrupt="raise")."""


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

    def __init__(self, plan, batch_size, rank, world_size, num_parallel_workers, video_ids, posterior="sample"):
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
        return state

    def load_state_dict(self, state):
        mine = self.state_dict()
        changed = [key for key in PLAN_KEYS if state.get(key) != mine[key]]
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

    def _noise(self, position, shape):
        rng = np.random.default_rng([self.plan.seed, self.epoch, int(position)])
        return rng.standard_normal(shape, dtype=np.float32)

    def latent(self, arrays, position):
        """The latent of plan position `position` from a clip's cached arrays {field: (F, C, h, w)}, in the
        model's space (× self.scaling_factor, which each loader sets from its cache or VAE)."""
        if "sample" in arrays:
            latent = arrays["sample"].astype(np.float32)
        elif self.posterior == "mean":
            latent = arrays["mean"].astype(np.float32)
        else:  # in place: (mean + std·ε)·scaling_factor
            latent = arrays["std"].astype(np.float32)
            latent *= self._noise(position, latent.shape)
            latent += arrays["mean"]
        latent *= np.float32(self.scaling_factor)
        return latent

    def _batches(self, video, start, positions):
        raise NotImplementedError


def _dataset_batches(dataset):
    for row in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
        yield {"latent": row["latent"], "label": row["label"], "index": row["index"]}


def _stack(samples):
    """Samples (tuples of arrays) -> one tuple of batched arrays. A dataset row per batch, not per
    sample: MindSpore's per-row cost (about 3 ms here) would otherwise exceed the sample's own."""
    return tuple(np.stack(column) for column in zip(*samples))


class CacheLoader(_ClipLoader):
    """Batches of clips from a cache folder written by `latte cache`, in any of its formats.

    on_corrupt: "skip" (report and leave out shards that disagree with the ledger) or "raise";
    check: "full" (sha256 of every shard when the loader is built) or "size" (file sizes only).
    cache_bytes bounds the decoded Parquet row groups kept in memory.
    """

    def __init__(self, cache_dir, batch_size, num_frames, sample_stride=1, clips_per_video=1, seed=0, rank=0,
                 world_size=1, shuffle=True, shuffle_window=4, num_parallel_workers=1, on_corrupt="skip",
                 check="full", cache_bytes=256 << 20, posterior="sample"):
        if on_corrupt not in ("skip", "raise"):
            raise ValueError(f"on_corrupt must be 'skip' or 'raise', got {on_corrupt!r}")
        self.cache = open_cache(cache_dir)
        if posterior == "mean" and "mean" not in self.cache.fields:
            raise ValueError(f"{self.cache.folder}: posterior='mean' needs a cache of the posterior "
                             f"(latent cache --store posterior); this one stores {self.cache.info['store']!r}")
        self.fields = ("mean",) if posterior == "mean" else self.cache.fields  # the fields a clip reads
        self.folder = self.cache.folder
        self.scaling_factor = self.cache.info["scaling_factor"]
        self.chunk_frames = self.cache.info["chunk_frames"]
        self.corrupt = check_shards(self.folder, read_ledger(self.folder), check)
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
        plan = ClipPlan([e["frames"] for e in self.entries], [shard_number[e["shard"]] for e in self.entries],
                        num_frames, sample_stride, clips_per_video, seed, shuffle, shuffle_window)
        super().__init__(plan, batch_size, rank, world_size, num_parallel_workers,
                         [e["video_id"] for e in self.entries], posterior)
        self._first_rows, self._shard_rows = self._chunk_rows()
        self._row_groups = _RowGroupCache(cache_bytes)

    def _chunk_rows(self):
        """Row number, within its shard, of each video's first chunk, and the rows of each shard
        (MindRecord / Parquet hold one row per chunk of `chunk_frames` frames)."""
        by_shard = collections.defaultdict(list)
        for entry in self.cache.entries.values():  # every video of a shard, usable or not, holds rows
            by_shard[entry["shard"]].append((entry["offset"], entry["frames"]))
        first, rows = {}, {}
        for shard, videos in by_shard.items():
            row = 0
            for offset, frames in sorted(videos):
                first[(shard, offset)] = row
                row += math.ceil(frames / self.chunk_frames)
            rows[shard] = row
        return first, rows

    def shard_folder(self, shard):
        return os.path.join(self.folder, "shards", shard)

    def _batches(self, video, start, positions):
        if self.cache.info["format"] == "mindrecord":
            return self._mindrecord_batches(video, start, positions)
        import mindspore.dataset as ds
        source = _PlanSource(self._clip_sample, video, start, positions, self.batch_size)
        dataset = ds.GeneratorDataset(source, column_names=["latent", "label", "index"], shuffle=False,
                                      num_parallel_workers=self.num_parallel_workers, python_multiprocessing=False)
        return _dataset_batches(dataset)

    def read_clip(self, entry, frame_indices):
        """{field: (F, C, h, w)} of one video's frames at `frame_indices`, in the cache dtype."""
        folder = self.shard_folder(entry["shard"])
        if self.cache.info["format"] == "numpy":
            return numpy_format.read_frames(folder, entry["offset"], self.fields, frame_indices)
        first_row = self._first_rows[(entry["shard"], entry["offset"])]
        chunks = range(frame_indices[0] // self.chunk_frames, frame_indices[-1] // self.chunk_frames + 1)
        parts = []
        for chunk in chunks:
            table, row = self._row_groups.row(folder, first_row + chunk, self.fields)
            offset, first_frame, arrays = parquet_format.chunk_of(table, row, self.fields, self.cache.dtype)
            if offset != entry["offset"] or first_frame != chunk * self.chunk_frames:
                raise IOError(f"{folder}: row {first_row + chunk} holds video {offset} frame {first_frame}, the "
                              f"index says video {entry['offset']} frame {chunk * self.chunk_frames}")
            parts.append(arrays)
        base = chunks[0] * self.chunk_frames
        return {field: np.concatenate([part[field] for part in parts])[frame_indices - base]
                for field in self.fields}

    def _mindrecord_batches(self, video, start, positions):
        """MindDataset reads exactly the chunk rows each clip needs, in plan order (SubsetSampler);
        a generator stage reassembles them into clips, so the shards are never read whole."""
        import mindspore.dataset as ds
        files = [os.path.join(self.shard_folder(shard), mindrecord_format.FILE_NAME) for shard in self.shards]
        base = dict(zip(self.shards, np.cumsum([0] + [self._shard_rows[shard] for shard in self.shards[:-1]])))
        per_clip = (self.plan.span - 1) // self.chunk_frames + 2  # most chunks a clip can touch
        rows = np.empty((len(positions), per_clip), np.int64)
        for i, position in enumerate(positions):
            entry = self.entries[video[position]]
            first = start[position] // self.chunk_frames
            last = (start[position] + self.plan.span - 1) // self.chunk_frames
            chunk = np.minimum(first + np.arange(per_clip), last)  # pad by repeating the last row
            rows[i] = base[entry["shard"]] + self._first_rows[(entry["shard"], entry["offset"])] + chunk
        fields = list(self.fields)

        # MindDataset refuses a SubsetSampler longer than the files' row count, and clips share rows:
        # the epoch's rows are read in segments of whole clips, each at most that long.
        total_rows = sum(self._shard_rows[shard] for shard in self.shards)
        clips_per_segment = max(1, total_rows // per_clip // self.batch_size) * self.batch_size

        def clips():
            for first in range(0, len(positions), clips_per_segment):
                segment = rows[first:first + clips_per_segment]
                records = ds.MindDataset(files, columns_list=["video", "start", "shape"] + fields,
                                         sampler=ds.SubsetSampler(segment.reshape(-1).tolist()),
                                         num_parallel_workers=self.num_parallel_workers)
                group, done, batch = [], first, []
                for record in records.create_tuple_iterator(num_epochs=1, output_numpy=True):
                    group.append(record)
                    if len(group) == per_clip:
                        position = positions[done]
                        batch.append(self._assemble(group, fields, video[position], start[position], position))
                        group, done = [], done + 1
                        if len(batch) == self.batch_size:
                            yield _stack(batch)
                            batch = []

        dataset = ds.GeneratorDataset(clips, column_names=["latent", "label", "index"], shuffle=False)
        return _dataset_batches(dataset)

    def _assemble(self, group, fields, video, start, position):
        entry = self.entries[video]
        chunks = {}
        for record in group:
            offset, first_frame, shape = int(record[0]), int(record[1]), tuple(record[2])
            if offset != entry["offset"]:
                raise IOError(f"{self.shard_folder(entry['shard'])}: a record of video {offset} where the index "
                              f"places video {entry['offset']}")
            chunks[first_frame] = {f: np.frombuffer(record[3 + i].tobytes(), self.cache.dtype).reshape(shape)
                                   for i, f in enumerate(fields)}
        base = min(chunks)
        indices = self.plan.frame_indices(start) - base
        arrays = {f: np.concatenate([chunks[k][f] for k in sorted(chunks)])[indices] for f in fields}
        return self._sample(arrays, entry, position)

    def _clip_sample(self, video, start, position):
        entry = self.entries[video]
        return self._sample(self.read_clip(entry, self.plan.frame_indices(start)), entry, position)

    def _sample(self, arrays, entry, position):
        label = -1 if entry["label"] is None else entry["label"]
        return self.latent(arrays, position), np.int32(label), np.int64(position)


class _PlanSource:
    """GeneratorDataset source: item k is the rank's k-th batch, make_sample(video, first frame, plan
    position) for each of its positions, stacked."""

    def __init__(self, make_sample, video, start, positions, batch_size):
        self.make_sample, self.video, self.start = make_sample, video, start
        self.positions, self.batch_size = positions, batch_size

    def __len__(self):
        return len(self.positions) // self.batch_size

    def __getitem__(self, k):
        batch = self.positions[k * self.batch_size:(k + 1) * self.batch_size]
        return _stack([self.make_sample(self.video[p], self.start[p], p) for p in batch])


def _prefer_jemalloc():
    """Arrow's default allocator here (mimalloc) keeps freed row groups: streaming a 0.5 GB Parquet
    cache through a 256 MB row-group cache grew the process to 1.3 GB; with jemalloc it stays near
    the cache size. Buffers remember their own pool, so switching is safe at any time."""
    if pa.default_memory_pool().backend_name == "mimalloc":
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            logger.debug("pyarrow has no jemalloc; Parquet reading may hold on to freed memory")


class _RowGroupCache:
    """Decoded Parquet row groups, least recently used dropped first once `max_bytes` is exceeded."""

    def __init__(self, max_bytes):
        _prefer_jemalloc()
        self.max_bytes = max_bytes
        self.tables = collections.OrderedDict()
        self.bounds = {}
        self.lock = threading.Lock()

    def row(self, folder, row, fields):
        """(table, row within it) holding shard row `row`."""
        with self.lock:
            if folder not in self.bounds:
                self.bounds[folder] = parquet_format.row_group_bounds(folder)
            bounds = self.bounds[folder]
        if not 0 <= row < bounds[-1]:
            raise IOError(f"{folder}: no row {row} (the shard holds {bounds[-1]})")
        group = int(np.searchsorted(bounds, row, side="right") - 1)
        key = (folder, group)
        with self.lock:
            table = self.tables.get(key)
            if table is not None:
                self.tables.move_to_end(key)
        if table is None:  # read outside the lock, so parallel workers read different row groups at once
            table = parquet_format.read_row_group(folder, group, fields)
            with self.lock:
                self.tables[key] = table
                while len(self.tables) > 1 and sum(t.nbytes for t in self.tables.values()) > self.max_bytes:
                    self.tables.popitem(last=False)
        return table, row - int(bounds[group])


class VideoLoader(_ClipLoader):
    """The uncached path behind the same API: clips decoded from the videos of an ingest manifest,
    center-cropped and resized to `image_size`, scaled to [-1, 1] and encoded by the VAE on the fly
    (in `micro_batch` frames at a time), then sampled from the posterior as the cached path does."""

    def __init__(self, manifest, vae, batch_size, num_frames, sample_stride=1, image_size=256, clips_per_video=1,
                 seed=0, rank=0, world_size=1, shuffle=True, num_parallel_workers=1, micro_batch=8,
                 posterior="sample"):
        from .video import read_manifest
        rows = read_manifest(manifest)
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
        super().__init__(plan, batch_size, rank, world_size, num_parallel_workers,
                         [row["video_id"] for row in self.entries], posterior)
        self.vae, self.image_size, self.micro_batch = vae, image_size, micro_batch
        self.scaling_factor = vae.config["scaling_factor"]

    def _batches(self, video, start, positions):
        import mindspore.dataset as ds
        source = _PlanSource(self._pixel_sample, video, start, positions, self.batch_size)
        dataset = ds.GeneratorDataset(source, column_names=["pixels", "label", "index"], shuffle=False,
                                      num_parallel_workers=self.num_parallel_workers, python_multiprocessing=False)
        for row in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
            mean, std = self.vae.encode_video(row["pixels"], micro_batch=self.micro_batch)
            latent = np.stack([self.latent({"mean": m, "std": s}, position)
                               for m, s, position in zip(mean, std, row["index"])])
            yield {"latent": latent, "label": row["label"], "index": row["index"]}

    def _pixel_sample(self, video, start, position):
        from .video import center_crop_resize, read_frames_at, to_pixels
        entry = self.entries[video]
        frames = read_frames_at(entry["path"], entry["kind"], self.plan.frame_indices(start))
        pixels = to_pixels([center_crop_resize(frame, self.image_size) for frame in frames])
        return pixels, np.int32(-1 if entry["label"] is None else entry["label"]), np.int64(position)
