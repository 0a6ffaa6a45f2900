import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import all_batches, assert_same_batches
from latte_toolkit.datasets.cache import CorruptCache, open_cache
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.datasets.loader import CacheLoader, ClipPlan, VideoLoader, _sample_rows
from latte_toolkit.cli import main

CLIP = dict(num_frames=4, sample_stride=2)  # a clip spans 7 frames


def test_a_clip_is_the_posterior_sample_of_its_frames(caches):
    loader = CacheLoader(caches["numpy"], batch_size=2, seed=3, **CLIP)
    assert loader.skipped_short == 1 and len(loader.video_ids) == 7
    video, start = loader.plan.epoch(0)
    cache = open_cache(caches["numpy"])
    batch = next(iter(loader))
    assert batch["latent"].shape == (2, 4, 4, 8, 8) and batch["latent"].dtype == np.float32
    for latent, position in zip(batch["latent"], batch["index"]):
        stored = cache.read(loader.video_ids[video[position]])
        frames = start[position] + 2 * np.arange(4)
        mean, std = (stored[f][frames].astype(np.float32) for f in ("mean", "std"))
        noise = np.random.default_rng([3, 0, int(position)]).standard_normal(mean.shape, dtype=np.float32)
        np.testing.assert_allclose(latent, (mean + std * noise) * 0.18215, rtol=1e-6, atol=1e-7)


def test_posterior_mean_gives_the_scaled_means_in_every_format_and_needs_a_posterior_cache(caches, tmp_path):
    from latte_toolkit.pipelines.cache import run_cache
    loader = CacheLoader(caches["numpy"], batch_size=2, seed=3, posterior="mean", **CLIP)
    video, start = loader.plan.epoch(0)
    cache = open_cache(caches["numpy"])
    reference = all_batches(loader)
    for latent, position in zip(reference[0]["latent"], reference[0]["index"]):
        mean = cache.read(loader.video_ids[video[position]])["mean"][start[position] + 2 * np.arange(4)]
        np.testing.assert_allclose(latent, mean.astype(np.float32) * 0.18215, rtol=1e-6)
    for fmt in FORMAT_NAMES[1:]:  # the others against the numpy reference
        assert_same_batches(reference, all_batches(CacheLoader(caches[fmt], batch_size=2, seed=3, posterior="mean", **CLIP)))
    run_cache(caches["ingest"], caches["vae"], tmp_path / "sampled", fmt="numpy", image_size=32, store="sample",
              workers=0, progress=False)
    with pytest.raises(ValueError, match="sampled.*posterior='mean' needs a cache of the posterior"):
        CacheLoader(tmp_path / "sampled", batch_size=2, posterior="mean", **CLIP)
    with pytest.raises(ValueError, match="posterior must be one of"):
        CacheLoader(caches["numpy"], batch_size=2, posterior="mode", **CLIP)


def test_every_format_and_worker_count_gives_the_same_batches(caches):
    reference = all_batches(CacheLoader(caches["numpy"], batch_size=3, clips_per_video=2, seed=1, shuffle_window=2, **CLIP))
    assert len(reference) == 7 * 2 // 3
    for fmt in FORMAT_NAMES:
        for workers in (1, 2):
            loader = CacheLoader(caches[fmt], batch_size=3, clips_per_video=2, seed=1, shuffle_window=2,
                                 num_parallel_workers=workers, **CLIP)
            assert_same_batches(reference, all_batches(loader))


def test_samples_are_reproducible_and_differ_between_epochs(caches):
    loader = CacheLoader(caches["parquet"], batch_size=7, seed=5, shuffle=False, **CLIP)
    first, second = all_batches(loader), all_batches(loader)
    assert loader.state_dict()["epoch"] == 2
    again = all_batches(CacheLoader(caches["parquet"], batch_size=7, seed=5, shuffle=False, **CLIP))
    assert_same_batches(first, again)
    assert not np.allclose(first[0]["latent"], second[0]["latent"])  # new clips and a new posterior draw
    other_seed = all_batches(CacheLoader(caches["parquet"], batch_size=7, seed=6, shuffle=False, **CLIP))
    assert not np.allclose(first[0]["latent"], other_seed[0]["latent"])


def test_the_users_prefetch_setting_is_back_once_the_loaders_pipelines_are_built(caches):
    """The cached path builds its pipeline with a queue of PREFETCH_ROWS rows, a global MindSpore setting:
    the user's value is restored, also when two loaders build theirs from two threads at once."""
    import mindspore.dataset as ds
    from concurrent.futures import ThreadPoolExecutor
    previous = ds.config.get_prefetch_size()
    ds.config.set_prefetch_size(5)
    try:
        loaders = [CacheLoader(caches[fmt], batch_size=2, **CLIP) for fmt in ("numpy", "mindrecord")]
        with ThreadPoolExecutor(2) as pool:
            batches = list(pool.map(all_batches, loaders))
        assert_same_batches(*batches)
        assert ds.config.get_prefetch_size() == 5
    finally:
        ds.config.set_prefetch_size(previous)


def test_shuffle_visits_shards_in_windows():
    groups = np.repeat(np.arange(12), 5)  # 12 shards of 5 videos
    plan = ClipPlan(np.full(60, 20), groups, num_frames=4, clips_per_video=2, seed=0, shuffle_window=3)
    video, start = plan.epoch(0)
    assert sorted(video.tolist()) == sorted(np.repeat(np.arange(60), 2).tolist())
    assert (start >= 0).all() and (start + plan.span <= 20).all()
    windows = [set(groups[video[i:i + 30]]) for i in range(0, 120, 30)]  # 3 shards x 5 videos x 2 clips
    assert all(len(w) == 3 for w in windows) and len(set().union(*windows)) == 12
    assert not np.array_equal(video, plan.epoch(1)[0])


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_rank_shards_are_disjoint_and_equally_long(caches, fmt):
    options = dict(batch_size=2, clips_per_video=3, seed=2, **CLIP)  # 21 clips: 3 global batches of 3 x 2
    ranks = [all_batches(CacheLoader(caches[fmt], rank=r, world_size=3, **options)) for r in range(3)]
    assert [len(batches) for batches in ranks] == [3, 3, 3]
    seen = np.concatenate([b["index"] for batches in ranks for b in batches])
    assert sorted(seen.tolist()) == list(range(18))


@pytest.mark.parametrize("use_image_num", [0, 3])  # 3: image-video joint training's images resume too
def test_exact_resume_mid_epoch_whatever_the_workers(caches, use_image_num):
    options = dict(batch_size=2, clips_per_video=2, seed=4, use_image_num=use_image_num, **CLIP)
    uninterrupted = CacheLoader(caches["mindrecord"], **options)
    expected = all_batches(uninterrupted) + all_batches(uninterrupted)  # two epochs
    first = CacheLoader(caches["mindrecord"], num_parallel_workers=1, **options)
    taken = []
    for batch in first:
        taken.append(batch)
        if len(taken) == 4:
            break
    state = json.loads(json.dumps(first.state_dict()))  # a small JSON-able dict
    assert state["epoch"] == 0 and state["position"] == 8
    resumed = CacheLoader(caches["mindrecord"], num_parallel_workers=2, **options)
    resumed.load_state_dict(state)
    assert_same_batches(expected, taken + all_batches(resumed) + all_batches(resumed))


@pytest.mark.parametrize("batch_size", [2, 7])  # 7 clips: a remainder of 1 is dropped, or the plan is used up
def test_a_state_saved_at_the_end_of_an_epoch_resumes_at_the_next_one(caches, batch_size):
    """A checkpoint written after an epoch's last batch holds (epoch e, position = where the epoch's batches
    end); the resumed loader goes on with epoch e + 1, as the uninterrupted one does."""
    options = dict(batch_size=batch_size, seed=4, **CLIP)
    uninterrupted = CacheLoader(caches["numpy"], **options)
    expected = all_batches(uninterrupted) + all_batches(uninterrupted) + all_batches(uninterrupted)
    first = CacheLoader(caches["numpy"], **options)
    taken = []
    for batch in first:  # the generator stays suspended after the last batch, as the training loop leaves it
        taken.append(batch)
        if len(taken) == first.batches_per_epoch:
            break
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 0 and state["position"] == first.batches_per_epoch * batch_size
    resumed = CacheLoader(caches["numpy"], **options)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (1, 0)
    assert_same_batches(expected, taken + all_batches(resumed) + all_batches(resumed))
    stuck = CacheLoader(caches["numpy"], **options)  # a loader put at the end some other way rolls over too
    stuck.position = stuck.plan.size
    assert_same_batches(expected[len(taken):2 * len(taken)], all_batches(stuck))
    with pytest.raises(ValueError, match="position 8"):
        resumed.load_state_dict({**state, "position": 8})


def test_resume_with_another_world_size_continues_the_same_plan(caches):
    options = dict(batch_size=2, clips_per_video=4, seed=8, **CLIP)  # 28 clips
    single = CacheLoader(caches["numpy"], **options)
    iterator = iter(single)
    consumed = [next(iterator)["index"] for _ in range(3)]
    state = single.state_dict()
    rest = []
    for rank in range(2):
        loader = CacheLoader(caches["numpy"], rank=rank, world_size=2, **options)
        loader.load_state_dict(state)
        rest += [b["index"] for b in all_batches(loader)]
    assert sorted(np.concatenate(consumed + rest).tolist()) == list(range(6 + 20))


def test_state_of_another_plan_is_refused(caches):
    loader = CacheLoader(caches["numpy"], batch_size=2, seed=1, **CLIP)
    state = loader.state_dict()
    state["seed"] = 2
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict(state)


@pytest.mark.parametrize("check", ["full", "size"])
def test_a_corrupt_shard_is_reported_then_skipped_or_fatal(caches, tmp_path, check):
    import shutil
    copy = tmp_path / "cache"
    shutil.copytree(caches["parquet"], copy)
    index = open_cache(copy).entries
    shard = copy / "shards" / index["clip_2.mp4"]["shard"]  # with clip_3.mp4
    data = bytearray((shard / "shard.parquet").read_bytes())
    if check == "full":
        data[len(data) // 3] ^= 0x01
    else:
        data = data[:-100]
    (shard / "shard.parquet").write_bytes(bytes(data))
    with pytest.raises(CorruptCache, match=shard.name):
        CacheLoader(copy, batch_size=2, on_corrupt="raise", check=check, **CLIP)
    loader = CacheLoader(copy, batch_size=1, on_corrupt="skip", check=check, **CLIP)
    assert list(loader.corrupt) == [shard.name] and loader.skipped_corrupt == 2
    assert "clip_2.mp4" not in loader.video_ids and "clip_3.mp4" not in loader.video_ids
    assert len(all_batches(loader)) == 5  # 8 videos, 2 in the corrupt shard, 1 too short


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_an_index_that_disagrees_with_the_ledger_is_reported_then_skipped_or_fatal(caches, tmp_path, fmt, caplog):
    """An index.parquet from another cache names shards this one never committed; an edited one drops a
    video of a shard: both are the ledger check's corruption, not a crash when the clip is read."""
    import shutil
    import pyarrow as pa
    import pyarrow.parquet as pq
    copy = tmp_path / "cache"
    shutil.copytree(caches[fmt], copy)
    rows = pq.read_table(copy / "index.parquet").to_pylist()
    renamed, trimmed = rows[0]["shard"], rows[4]["shard"]  # clip_0+clip_1, clip_4+clip_5
    assert renamed != trimmed
    for row in rows:
        row["shard"] = "s-0000000000000000" if row["shard"] == renamed else row["shard"]
    rows = [row for row in rows if row["video_id"] != "clip_5.mp4"]
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(copy / "index.parquet")), copy / "index.parquet")

    with pytest.raises(CorruptCache, match="s-0000000000000000.*never committed.*" + trimmed):
        CacheLoader(copy, batch_size=1, on_corrupt="raise", **CLIP)
    loader = CacheLoader(copy, batch_size=1, on_corrupt="skip", **CLIP)
    assert sorted(loader.corrupt) == sorted(["s-0000000000000000", trimmed]) and loader.skipped_corrupt == 3
    assert not {"clip_0.mp4", "clip_1.mp4", "clip_4.mp4"} & set(loader.video_ids)
    assert "2 committed videos are not in index.parquet" in caplog.text  # clip_0 and clip_1 under their shard
    assert len(all_batches(loader)) == 3  # 8 videos: 3 in disagreeing shards, 1 not indexed, 1 too short

    result = CliRunner().invoke(main, ["report", "--verify", str(copy)])
    assert result.exit_code == 1, result.output
    assert "CORRUPT s-0000000000000000: named by index.parquet, never committed" in result.output
    assert f"CORRUPT {trimmed}: index.parquet's 1 video(s) in it differ from the 2 the ledger committed" in result.output


def test_the_uncached_path_matches_the_cache(caches):
    from latte_core import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(caches["vae"])
    options = dict(batch_size=3, clips_per_video=1, seed=9, shuffle=False, **CLIP)  # one order for both
    cached = all_batches(CacheLoader(caches["float32"], **options))
    uncached = all_batches(VideoLoader(caches["ingest"], vae, image_size=32, micro_batch=4, num_parallel_workers=2, **options))
    assert len(uncached) == len(cached) == 2
    for a, b in zip(cached, uncached):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_allclose(a["latent"], b["latent"], rtol=1e-4, atol=1e-5)


def test_bad_settings_are_refused(caches):
    with pytest.raises(ValueError, match="no video holds a clip"):
        CacheLoader(caches["numpy"], batch_size=1, num_frames=20, sample_stride=2)
    with pytest.raises(ValueError, match="rank"):
        CacheLoader(caches["numpy"], batch_size=1, rank=2, world_size=2, **CLIP)
    with pytest.raises(ValueError, match="global batch"):
        CacheLoader(caches["numpy"], batch_size=8, **CLIP)


def test_bench_loader_prints_its_figures(caches, tmp_path):
    def bench(*options):
        result = CliRunner().invoke(main, ["bench", "loader", str(caches["mindrecord"]), "--batch", "2",
                                           "--num-frames", "4", *options])
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])

    info = open_cache(caches["mindrecord"]).info
    latent_side = info["image_size"] // info["downsample_factor"]
    frame_bytes = info["latent_channels"] * latent_side ** 2 * np.dtype(info["dtype"]).itemsize
    (tmp_path / "bench.yaml").write_text("posterior: mean\nimages: 2\nworkers: 2\n")  # images is a key like the others
    # the mean alone reads half the stored bytes; a sample with 2 images reads 4 + 2 frames
    for options, posterior, fields, images, workers in ((("--workers", "1"), "sample", 2, 0, 1),
                                                         (("-c", str(tmp_path / "bench.yaml")), "mean", 1, 2, 2)):
        figures = bench(*options)
        assert figures["format"] == "mindrecord" and figures["posterior"] == posterior
        assert figures["use_image_num"] == images and figures["num_parallel_workers"] == workers
        loader = figures["loader"]
        assert loader["samples"] > 0 and loader["clip_bytes"] == (4 + images) * fields * frame_bytes
        first_epoch = figures["loader_first_epoch"]
        assert first_epoch["first_batch_seconds"] > 0  # timed apart from the rates
        # the second epoch is timed whole, the first after its first batch (of 2)
        assert loader["samples"] == first_epoch["samples"] + 2 > 2
        assert loader["frames_per_s"] == pytest.approx(loader["samples_per_s"] * (4 + images), rel=0.01)  # rounding
        for baseline, threads in (("latent_arithmetic", workers), ("latent_arithmetic_one_thread", 1)):
            assert figures[baseline]["threads"] == threads
            assert figures[baseline]["samples"] == loader["samples"]
        for key, rate in (("loader_to_latent_arithmetic", loader), ("first_epoch_to_latent_arithmetic", first_epoch)):
            assert figures[key] == pytest.approx(  # 3-decimal rounding
                rate["samples_per_s"] / figures["latent_arithmetic"]["samples_per_s"], abs=2e-3)
        assert figures["plain_read"]["bytes"] > 0 and figures["peak_rss_mb"] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sample_rows_keep_item_order_and_raise_the_first_failing_items_error_after_the_rows_before_it(workers):
    """The workers finish samples out of order (uneven delays); rows still come in item order, the rows
    after the first get their latents computed into slots of one array, and of two failing items in one
    row the earlier one's error is raised, after the whole rows before it."""
    slots = []

    def make_sample(value, latent):
        time.sleep((value % 3) * 0.002)
        if value in (21, 23):
            raise ValueError(f"item {value}")
        slots.append((value, latent is not None))
        out = np.empty(3, np.float32) if latent is None else latent
        out[:] = value
        return out, np.int64(value)

    rows = _sample_rows(make_sample, ((value,) for value in range(40)), 8, workers)
    for first in (0, 8):
        latents, values = next(rows)
        assert values.tolist() == list(range(first, first + 8))
        np.testing.assert_array_equal(latents, np.repeat(values[:, None], 3, 1).astype(np.float32))
    with pytest.raises(ValueError, match="item 21"):
        next(rows)
    assert {value: slotted for value, slotted in slots if value < 16} == {v: v >= 8 for v in range(16)}
