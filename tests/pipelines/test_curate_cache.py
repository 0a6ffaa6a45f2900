"""`latte cache` and the loaders take a curate folder: each clip a cache video of its own id (its video's
label and caption, its frames inside the letterbox bars the curation crops), one video's clips in one
shard, decoded once; the uncached VideoLoader reads the same clips. Caches of ingest manifests keep their
bytes (checked by hand against the code before: every shard, index and cache.json of all three formats
identical) and their fingerprint has no curation key."""
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.loader import CacheLoader, VideoLoader
from latte_toolkit.datasets.video import center_crop_resize, iter_frames
from latte_toolkit.pipelines.cache import run_cache
from latte_toolkit.pipelines.curate import run_curate
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.synthetic import captioned_cloud_frames, texture_drift_frames

from media import write_mp4


@pytest.fixture(scope="module")
def curated(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("curated")
    src = root / "src"
    # a hard cut at frame 24, and a clip with 8-px black bars above and below its 48x64 picture
    write_mp4(src / "cut.mp4", np.concatenate([captioned_cloud_frames("left", "blue", 24, 64, 1.0, seed=0),
                                               captioned_cloud_frames("up", "orange", 24, 64, 1.0, seed=1)]))
    write_mp4(src / "bars.mp4", np.pad(texture_drift_frames(20, 1.0, 48, 64, seed=2), ((0, 0), (8, 8), (0, 0), (0, 0))))
    with open(src / "list.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "caption", "class"])
        writer.writeheader()
        writer.writerows([{"video": "cut.mp4", "caption": "clouds", "class": 3},
                          {"video": "bars.mp4", "caption": "texture", "class": 5}])
    run_ingest([src / "list.csv"], root / "ingest", workers=0, progress=False)
    run_curate(root / "ingest", root / "curate", min_clip_frames=4, max_clip_frames=16, min_motion=0.0,
               letterbox="crop", workers=0, progress=False)
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    run_cache(root / "curate", vae, root / "cache", dtype="float32", image_size=32, shard_videos=1, workers=0,
              progress=False)
    clips = pq.read_table(root / "curate" / "clips.parquet").to_pylist()
    return {"root": root, "vae": vae, "clips": clips}


def test_each_clip_is_a_cache_video_of_its_video(curated):
    clips = {row["clip_id"]: row for row in curated["clips"]}
    assert sorted(clips) == ["bars.mp4@000000-000016", "bars.mp4@000016-000020", "cut.mp4@000000-000016",
                             "cut.mp4@000016-000023", "cut.mp4@000025-000041", "cut.mp4@000041-000048"]
    index = {row["video_id"]: row for row in pq.read_table(curated["root"] / "cache" / "index.parquet").to_pylist()}
    assert sorted(index) == sorted(clips)
    for clip_id, row in index.items():
        assert (row["frames"], row["label"], row["caption"]) == (clips[clip_id]["num_frames"], clips[clip_id]["label"],
                                                                 clips[clip_id]["caption"])
    shards = {video: {row["shard"] for clip_id, row in index.items() if clip_id.startswith(video)}
              for video in ("bars.mp4", "cut.mp4")}
    assert all(len(found) == 1 for found in shards.values()) and shards["bars.mp4"] != shards["cut.mp4"]
    info = json.loads((curated["root"] / "cache" / "cache.json").read_text())
    assert info["curation"] == json.loads((curated["root"] / "curate" / "curate.json").read_text())


def test_a_clip_holds_the_latents_of_its_frames_inside_the_bars(curated):
    """The reference: the source video's frames [start, end) as decoded whole, cropped to the clip's
    picture, through the crop rule and the VAE (float32 cache: the uncached path's bound, 1e-4)."""
    from latte_core import AutoencoderKL
    model = AutoencoderKL.from_pretrained(curated["vae"])
    cache = open_cache(curated["root"] / "cache")
    for clip in curated["clips"]:
        if clip["clip_id"] not in ("bars.mp4@000016-000020", "cut.mp4@000025-000041"):
            continue
        frames = list(iter_frames(clip["path"], "video"))[clip["start_frame"]:clip["end_frame"]]
        top, left = clip["crop_top"], clip["crop_left"]
        pictures = [f[top:top + clip["height"], left:left + clip["width"]] for f in frames]
        assert pictures[0].shape[:2] == ((48, 64) if clip["video_id"] == "bars.mp4" else (64, 64))
        pixels = np.stack([center_crop_resize(p, 32) for p in pictures]).astype(np.float32) / 127.5 - 1
        mean, _ = model.encode_video(pixels.transpose(0, 3, 1, 2)[None])
        np.testing.assert_allclose(cache.read(clip["clip_id"])["mean"], mean[0], rtol=1e-4, atol=1e-4)


def test_the_uncached_loader_reads_the_same_clips(curated):
    from latte_core import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(curated["vae"])
    options = dict(batch_size=2, num_frames=4, sample_stride=1, clips_per_video=1, seed=3, shuffle=False)
    cached = list(CacheLoader(curated["root"] / "cache", **options))
    uncached = list(VideoLoader(curated["root"] / "curate", vae, image_size=32, micro_batch=4, **options))
    assert len(cached) == len(uncached) == 3  # six clips, each at least 4 frames
    for a, b in zip(cached, uncached):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_allclose(a["latent"], b["latent"], rtol=1e-4, atol=1e-5)


def test_a_clip_of_a_file_truncated_after_ingest_caches_and_loads(tmp_path, fixtures_dir):
    """decord refuses the truncated file; the cache and the uncached loader read the clip's frames before
    the damage through PyAV, as the curation did."""
    from latte_core import AutoencoderKL
    from media import moving_square_frames, truncate
    write_mp4(tmp_path / "src" / "cut.mp4", moving_square_frames(60, height=64, width=64), faststart=True)
    run_ingest([tmp_path / "src"], tmp_path / "ingest", workers=0, progress=False)
    truncate(tmp_path / "src" / "cut.mp4", 0.6)
    run_curate(tmp_path / "ingest", tmp_path / "curate", min_clip_frames=4, min_motion=0.0, workers=0,
               progress=False)
    (clip,) = pq.read_table(tmp_path / "curate" / "clips.parquet").to_pylist()
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    summary = run_cache(tmp_path / "curate", vae, tmp_path / "cache", image_size=32, workers=0, progress=False)
    assert summary["failed"] == 0
    assert open_cache(tmp_path / "cache").read(clip["clip_id"])["mean"].shape[0] == clip["num_frames"]
    loader = VideoLoader(tmp_path / "curate", AutoencoderKL.from_pretrained(vae), batch_size=1,
                         num_frames=clip["num_frames"], image_size=32, micro_batch=4)
    assert next(iter(loader))["latent"].shape[:2] == (1, clip["num_frames"])


def test_a_rerun_resumes_and_other_curation_keys_are_refused(curated, tmp_path):
    from latte_toolkit.pipelines.cache import CacheError
    again = run_cache(curated["root"] / "curate", curated["vae"], curated["root"] / "cache", dtype="float32",
                      image_size=32, shard_videos=1, workers=0, progress=False)
    assert (again["shards_run"], again["shards_skipped"]) == (0, 2)
    run_curate(curated["root"] / "ingest", tmp_path / "other", min_clip_frames=4, max_clip_frames=12,
               min_motion=0.0, letterbox="crop", workers=0, progress=False)
    with pytest.raises(CacheError, match="curation differ"):
        run_cache(tmp_path / "other", curated["vae"], curated["root"] / "cache", dtype="float32", image_size=32,
                  shard_videos=1, workers=0, progress=False)
