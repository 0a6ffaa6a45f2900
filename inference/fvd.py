"""`latte eval fvd`: the Fréchet Video Distance (and the kernel distance, KVD) between a real and a fake set
of videos, with the I3D of VideoGPT / TATS / cd-fvd, under a protocol that every result records.

    sources ──▶ plan_clips (seeded choice of videos and of each real clip's first frame; probes)
            ──▶ clip_features (decode, centre crop + resize to `resolution`, I3D's resize to 224, the
                400 logits averaged over time; micro-batches, in this process / on dask / per msrun rank)
            ──▶ FeatureStats (mean, covariance, count, the features) ──▶ frechet_distance, kernel_distance
            ──▶ result {FVD<frames>, KVD<frames>, protocol, counts, bootstrap}

The distance is cd-fvd 0.1.1's: the features' means and covariances (normalised by the count, as its
FeatureStats), `scipy.linalg.sqrtm(sigma_real @ sigma_fake)`, its real part. A saved statistics file
(`--save-stats`, npz without pickle) keeps the real set's mean, covariance, count, features and protocol;
a run reusing it refuses any protocol difference by name.
"""
import json
import logging
import os
import warnings

import mindspore as ms
import numpy as np
import scipy.linalg
from mindspore.mint.distributed import all_gather_object
from tqdm.auto import tqdm

from latte_core.atomic import finite_or_none, make_output_dir, sha256_of, staged, write_json_atomically
from latte_core.errors import JobAborted
from latte_core.i3d import I3D_CLASSES, I3D_RESOLUTION, MIN_FRAMES, load_i3d, preprocess_i3d
from latte_toolkit.datasets.video import (VIDEO_EXTENSIONS, UnusableInput, center_crop_resize, probe_video,
                                          read_clip_frames, read_manifest)
from latte_toolkit.pipelines.runners import prefetch, run_units

from .config import FvdError

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
# the protocol fields a result or a statistics file records; two sets compare only if all agree
PROTOCOL_FIELDS = ("detector", "detector_sha256", "frames", "resolution", "real_stride", "num_videos", "seed",
                   "clip_rule", "features", "version")
DETECTOR = "InceptionI3d(400) i3d_pretrained_400 layout (VideoGPT / TATS / cd-fvd)"
CLIP_RULE = ("real: seeded first frame, every real_stride-th frame; fake: frames 0..frames-1; each frame "
             "centre-cropped to a square and resized bilinearly to resolution, then to 224 (bilinear, "
             "half-pixel, no antialiasing) and scaled to [-1, 1]")
FEATURES = "I3D logits (400) averaged over time; float32 per video, statistics in float64"
STATS_ARRAYS = {"mean": (I3D_CLASSES,), "cov": (I3D_CLASSES, I3D_CLASSES), "count": (), "features": (None, I3D_CLASSES),
                "protocol": ()}
KVD_SUBSETS, KVD_SUBSET_SIZE = 100, 1000  # StyleGAN-V's KID estimator on video features


def metric_names(frames):
    """("FVD16", "KVD16") for 16 frames: the field names FVD by its clip length."""
    return f"FVD{frames}", f"KVD{frames}"


def make_protocol(config, detector_sha256):
    return {"detector": DETECTOR, "detector_sha256": detector_sha256, "frames": config["frames"],
            "resolution": config["resolution"], "real_stride": config["real_stride"],
            "num_videos": config["num_videos"], "seed": config["seed"], "clip_rule": CLIP_RULE,
            "features": FEATURES, "version": PROTOCOL_VERSION}


def protocol_mismatch(saved, current, source):
    """None, or a message naming every protocol field on which `saved` (a statistics file's) and
    `current` differ, with both values."""
    differing = [f"{field}: {saved.get(field)!r} in the file, {current[field]!r} now"
                 for field in PROTOCOL_FIELDS if saved.get(field) != current[field]]
    if not differing:
        return None
    return (f"{source}: statistics of another protocol ({'; '.join(differing)}); compute them again with "
            f"these settings, or run with the file's")


# ------------------------------------------------------------------------------------------ statistics
class FeatureStats:
    """The features of one set of videos (n, 400) float32, with their float64 mean and covariance
    (normalised by n, as cd-fvd's FeatureStats) and the protocol they were made under."""

    def __init__(self, features, protocol, mean=None, cov=None):
        self.features = np.asarray(features, np.float32)
        self.count = len(self.features)
        self.protocol = protocol
        if mean is None:
            mean, cov = mean_cov(self.features)
        self.mean, self.cov = mean, cov

    def save(self, path):
        """Write the statistics as an npz of plain arrays (the protocol as a JSON string), atomically."""
        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez(handle, mean=self.mean, cov=self.cov, count=np.int64(self.count), features=self.features,
                         protocol=np.array(json.dumps(self.protocol, sort_keys=True)))
        with staged(path) as tmp:
            write(tmp)
        return path

    @classmethod
    def load(cls, path):
        """Statistics saved by `save`; any other file is an FvdError naming it and the array at fault."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError) as err:
            raise FvdError(f"{path}: not a statistics file of `latte eval fvd --save-stats` ({err})") from None
        for name, shape in STATS_ARRAYS.items():
            if name not in arrays:
                raise FvdError(f"{path}: not a statistics file of `latte eval fvd --save-stats` (no {name!r} array)")
            actual = arrays[name].shape
            if len(actual) != len(shape) or any(want is not None and want != got for want, got in zip(shape, actual)):
                raise FvdError(f"{path}: array {name!r} has shape {actual}, expected {shape}")
        try:
            protocol = json.loads(str(arrays["protocol"]))
        except ValueError:
            raise FvdError(f"{path}: its protocol is not JSON") from None
        count = int(arrays["count"])
        if count != len(arrays["features"]) or not isinstance(protocol, dict):
            raise FvdError(f"{path}: count {count} and {len(arrays['features'])} features disagree, or no protocol")
        return cls(arrays["features"], protocol, arrays["mean"].astype(np.float64), arrays["cov"].astype(np.float64))


def mean_cov(features):
    """float64 mean and covariance of (n, d) features, normalised by n (cd-fvd's FeatureStats.get_mean_cov)."""
    x = np.asarray(features, np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    return mean, centred.T @ centred / len(x)


def frechet_distance(mean_real, cov_real, mean_fake, cov_fake):
    """|mu_r - mu_f|^2 + tr(S_r + S_f - 2 sqrtm(S_r S_f)), the real part (cd-fvd's compute_fvd_from_stats)."""
    with warnings.catch_warnings():  # with fewer videos than features the product is singular, as expected
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_real @ cov_fake)
    return float(np.real(np.square(mean_real - mean_fake).sum() + np.trace(cov_fake + cov_real - 2 * root)))


def kernel_distance(real, fake, seed=0):
    """The kernel distance (KID's unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3),
    averaged over KVD_SUBSETS seeded subsets of up to KVD_SUBSET_SIZE videos of each set (StyleGAN-V's
    compute_kid); float64."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    dim = real.shape[1]
    size = min(len(real), len(fake), KVD_SUBSET_SIZE)
    if size < 2:
        return None
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(KVD_SUBSETS):
        x = fake[rng.choice(len(fake), size, replace=False)]
        y = real[rng.choice(len(real), size, replace=False)]
        a = (x @ x.T / dim + 1) ** 3 + (y @ y.T / dim + 1) ** 3
        b = (x @ y.T / dim + 1) ** 3
        total += (a.sum() - np.diag(a).sum()) / (size - 1) - b.sum() * 2 / size
    return float(total / KVD_SUBSETS / size)


def bootstrap_fvd(real, fake_features, rounds, seed):
    """std and 2.5 / 97.5 percentiles of the FVD over `rounds` resamplings (with replacement, seeded) of
    the fake features, the real statistics fixed."""
    rng = np.random.default_rng([seed, 2])
    values = []
    for _ in range(rounds):
        sample = fake_features[rng.integers(0, len(fake_features), len(fake_features))]
        values.append(frechet_distance(real.mean, real.cov, *mean_cov(sample)))
    values = np.array(values)
    return {"rounds": rounds, "std": float(values.std(ddof=1)) if rounds > 1 else 0.0,
            "p2.5": float(np.percentile(values, 2.5)), "p97.5": float(np.percentile(values, 97.5))}


# --------------------------------------------------------------------------------------------- sources
def source_kind(path):
    """"stats" (an .npz of --save-stats), "manifest" (an ingest folder or its manifest.parquet), "curate"
    (a `latte curate` folder: its clips) or "videos" (a folder of video files; of a `latte sample` folder,
    its MP4s)."""
    if os.path.isfile(path):
        if path.endswith(".npz"):
            return "stats"
        if path.endswith(".parquet"):
            return "manifest"
        raise FvdError(f"{path}: not a source (a folder of videos, an ingest folder or manifest.parquet, or a "
                       f"statistics .npz of --save-stats)")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "curate.json")):
            return "curate"
        return "manifest" if os.path.isfile(os.path.join(path, "manifest.parquet")) else "videos"
    raise FvdError(f"{path}: no such file or folder")


def list_videos(path):
    """[{video_id, path, kind, num_frames: None}] of the video files under `path` (recursive), sorted by id;
    in a `latte sample` folder (its summary.json) only the MP4s, the same videos as its GIFs."""
    sample_folder = os.path.isfile(os.path.join(path, "summary.json"))
    extensions = (".mp4",) if sample_folder else VIDEO_EXTENSIONS
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in files:
            if name.lower().endswith(extensions):
                full = os.path.join(root, name)
                found.append({"video_id": os.path.relpath(full, path), "path": full, "kind": "video",
                              "num_frames": None})
    return sorted(found, key=lambda row: row["video_id"])  # as a manifest sorts them: the same clips drawn


def read_source_rows(path):
    kind = source_kind(path)
    if kind in ("manifest", "curate"):  # a curate folder's clips: read_clip_frames cuts and crops them
        rows = read_manifest(path, clips=True)
    else:
        rows = list_videos(path)
    if not rows:
        raise FvdError(f"{path}: holds no videos ({', '.join(VIDEO_EXTENSIONS)})")
    return rows


def plan_clips(path, role, config):
    """The clips of one source: its videos in a seeded order (by (seed, role)), the first num_videos of them
    that probe (a manifest's rows carry their frame count and are not probed), then back in the source's
    order; a real clip's first frame drawn (seeded by (seed, role, the video's place in the source)) so
    that `frames` frames every `real_stride` fit. Returns (clips, failed): a video that does not probe is
    a failure row (the next in the order replaces it), a short one an FvdError naming it; fewer usable
    videos than num_videos an FvdError unless allow_fewer."""
    rows = read_source_rows(path)
    wanted, frames = config["num_videos"], config["frames"]
    stride = config["real_stride"] if role == "real" else 1
    span = (frames - 1) * stride + 1
    order = np.random.default_rng([config["seed"], _ROLES[role]]).permutation(len(rows))
    chosen, failed = [], []
    for index in order:
        if len(chosen) == wanted:
            break
        row = rows[index]
        count = row["num_frames"]
        if count is None:
            try:
                count = probe_video(row["path"])["num_frames"]
            except UnusableInput as err:
                failed.append({"video_id": row["video_id"], "category": err.category, "message": err.message})
                continue
        if count < span:
            where = f"{row['path']} (clip {row['video_id']})" if "start_frame" in row else row["path"]
            raise FvdError(f"{where}: {count} frames, shorter than the {span} a clip of --frames {frames}"
                           + (f" every --real-stride {stride}" if stride > 1 else "") + " needs")
        first = 0
        if role == "real":
            first = int(np.random.default_rng([config["seed"], _ROLES[role], int(index)]).integers(0, count - span + 1))
        chosen.append((int(index), {"video_id": row["video_id"], "row": row,
                                    "indices": list(range(first, first + span, stride))}))
    clips = [clip for _, clip in sorted(chosen, key=lambda item: item[0])]
    _check_count(path, len(clips), failed, config)
    return clips, failed


_ROLES = {"real": 0, "fake": 1}


def _check_count(path, usable, failed, config):
    wanted = config["num_videos"]
    if usable >= wanted:
        return
    why = f" ({len(failed)} unreadable)" if failed else ""
    if not config["allow_fewer"]:
        raise FvdError(f"{path}: {usable} usable videos{why}, fewer than --num-videos {wanted} (give --allow-fewer "
                       f"to compute on {usable}: the result records the count)")
    logger.warning("%s: %d usable videos%s, fewer than --num-videos %d (--allow-fewer)", path, usable, why, wanted)


# --------------------------------------------------------------------------------------------- features
_MODELS = {}  # (path, sha256) -> InceptionI3d, one per process (dask workers keep theirs between units)


def _model(path, sha256):
    key = (os.path.abspath(path), sha256)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_i3d(path)
    return _MODELS[key]


def decode_clip(clip, resolution):
    """uint8 (T, resolution, resolution, 3): the clip's frames, each centre-cropped to a square and resized."""
    frames = read_clip_frames(clip["row"], clip["indices"])
    return np.stack([center_crop_resize(frame, resolution) for frame in frames])


def clip_features(spec, progress=None):
    """The unit of feature extraction: {"clips", "i3d", "sha256", "resolution", "batch_size"} ->
    {"features": float32 (n, 400) of the clips that decoded, in order, "failed": [failure rows]}.
    Micro-batches of batch_size videos (the last padded by repeating its last video, so one compiled
    shape serves them all); memory is bounded by batch_size, whatever the number of clips."""
    model = _model(spec["i3d"], spec["sha256"])
    batch_size, features, failed = spec["batch_size"], [], []

    def decoded():
        for clip in spec["clips"]:
            try:
                yield clip, decode_clip(clip, spec["resolution"])
            except UnusableInput as err:
                yield clip, UnusableInput(err.category, err.message)

    def run(batch):
        count = len(batch)
        batch = batch + [batch[-1]] * (batch_size - count)
        logits = model(ms.Tensor(preprocess_i3d(np.stack(batch), I3D_RESOLUTION))).asnumpy()
        features.append(logits[:count].astype(np.float32))
        if progress is not None:
            progress(count)

    batch = []
    for clip, frames in prefetch(decoded(), 2):
        if isinstance(frames, UnusableInput):
            failed.append({"video_id": clip["video_id"], "category": frames.category, "message": frames.message})
            continue
        batch.append(frames)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    return {"features": np.concatenate(features) if features else np.zeros((0, I3D_CLASSES), np.float32),
            "failed": failed}


def extract_features(clips, config, sha256, desc, rank=0, ranks=1):
    """(features float32 (n, 400) in the clips' order, failed rows): in this process (workers 0), on a dask
    LocalCluster / an existing scheduler, or split over msrun ranks (clip i on rank i mod ranks, gathered
    back in order on every rank). The features of a clip do not depend on which of these ran it up to
    float32 rounding of the micro-batch it shared (see README: Evaluation)."""
    unit_size = config["batch_size"] * config["unit_batches"]
    mine = [(i, clip) for i, clip in enumerate(clips) if i % ranks == rank]
    specs = [{"unit_id": f"{desc}-{start}", "clips": [clip for _, clip in mine[start:start + unit_size]],
              "positions": [i for i, _ in mine[start:start + unit_size]], "i3d": config["i3d"], "sha256": sha256,
              "resolution": config["resolution"], "batch_size": config["batch_size"]}
             for start in range(0, len(mine), unit_size)]
    results = {}
    bar = tqdm(total=len(mine), unit="video", desc=f"I3D features ({desc})")
    try:
        if config["workers"] == 0 and config["scheduler"] is None:
            for spec in specs:
                results[spec["unit_id"]] = clip_features(spec, bar.update)
        else:
            def done(spec, result):
                if result is None:  # run_units logged the worker's exception
                    raise JobAborted(f"the I3D features of {desc} unit {spec['unit_id']} failed on a dask worker "
                                     f"(its error is logged above); nothing was written")
                results[spec["unit_id"]] = result
                bar.update(len(spec["clips"]))
            run_units(clip_features, specs, done, config["workers"], config["scheduler"])
    finally:
        bar.close()
    rows, failed = [], []
    for spec in specs:
        result = results[spec["unit_id"]]
        failed_ids = {row["video_id"] for row in result["failed"]}
        kept = [i for i, clip in zip(spec["positions"], spec["clips"]) if clip["video_id"] not in failed_ids]
        rows.extend(zip(kept, result["features"]))
        failed.extend(result["failed"])
    if ranks > 1:
        rows, failed = _gather(rows, failed, ranks)
    rows.sort(key=lambda item: item[0])
    features = np.stack([f for _, f in rows]) if rows else np.zeros((0, I3D_CLASSES), np.float32)
    return features, sorted(failed, key=lambda row: row["video_id"])


def _gather(rows, failed, ranks):
    """Every rank's (position, features) rows and failures, on every rank."""
    gathered = [None] * ranks
    all_gather_object(gathered, ([(i, np.asarray(f)) for i, f in rows], failed))
    return [row for part in gathered for row in part[0]], [row for part in gathered for row in part[1]]


# ---------------------------------------------------------------------------------------------- the run
def check_settings(config):
    if config["frames"] < MIN_FRAMES:
        raise FvdError(f"--frames {config['frames']}: the I3D needs at least {MIN_FRAMES} frames")
    if config["bootstrap"] and config["bootstrap"] < 2:
        raise FvdError(f"--bootstrap {config['bootstrap']}: give 0 (none) or at least 2 resamplings")


def plan_side(path, role, config, protocol):
    """One side's plan, before any video is decoded: ("stats", FeatureStats) for a statistics file (its
    protocol checked against this run's), or ("videos", (clips, failed))."""
    if source_kind(path) == "stats":
        stats = FeatureStats.load(path)
        wrong = protocol_mismatch(stats.protocol, protocol, path)
        if wrong:
            raise FvdError(wrong)
        return "stats", stats
    return "videos", plan_clips(path, role, config)


def compute_side(path, role, plan, config, protocol, sha256, rank, ranks):
    """(FeatureStats, summary) of one side from its plan: the videos run through the I3D."""
    kind, value = plan
    if kind == "stats":
        return value, {"source": path, "kind": "stats", "count": value.count, "failed": 0, "failures": []}
    clips, failed = value
    features, failed_late = extract_features(clips, config, sha256, role, rank, ranks)
    failed = failed + failed_late
    for row in failed:
        logger.warning("%s: %s (%s)", row["video_id"], row["message"], row["category"])
    _check_count(path, len(features), failed, config)
    return FeatureStats(features, protocol), {"source": path, "kind": source_kind(path), "count": len(features),
                                              "failed": len(failed), "failures": failed}


def run_fvd(config, rank=0, ranks=1):
    """The whole evaluation: returns the result dict (see README: Evaluation). Every input is checked
    (the I3D file, both sources, a statistics file's protocol, the videos' counts and lengths) before any
    video is decoded, and nothing is written unless all of it succeeds."""
    check_settings(config)
    if source_kind(config["fake"]) == "stats":
        raise FvdError(f"{config['fake']}: --fake takes videos (a folder or a manifest); statistics files are for "
                       f"--real")
    if config["save_stats"] and source_kind(config["real"]) == "stats":
        raise FvdError(f"--save-stats {config['save_stats']}: --real is a statistics file already")
    if not os.path.isfile(config["i3d"]):
        raise FvdError(f"--i3d {config['i3d']}: no such file (i3d_pretrained_400.pt: see README, Evaluation)")
    for key in ("save_stats", "out"):
        if config[key]:
            make_output_dir(os.path.dirname(os.path.abspath(config[key])), f"--{key.replace('_', '-')} folder",
                            create=False, error=FvdError)
    sha256 = sha256_of(config["i3d"])
    _model(config["i3d"], sha256)  # a file that is not this I3D is refused before any decoding
    protocol = make_protocol(config, sha256)
    plans = {role: plan_side(config[role], role, config, protocol) for role in ("real", "fake")}
    real, real_summary = compute_side(config["real"], "real", plans["real"], config, protocol, sha256, rank, ranks)
    fake, fake_summary = compute_side(config["fake"], "fake", plans["fake"], config, protocol, sha256, rank, ranks)
    fvd_name, kvd_name = metric_names(config["frames"])
    result = {"metric": fvd_name, fvd_name: frechet_distance(real.mean, real.cov, fake.mean, fake.cov),
              kvd_name: kernel_distance(real.features, fake.features, config["seed"]),
              "real": real_summary, "fake": fake_summary, "protocol": protocol}
    if config["bootstrap"]:
        result["bootstrap"] = bootstrap_fvd(real, fake.features, config["bootstrap"], config["seed"])
    if config["save_stats"] and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(config["save_stats"])), exist_ok=True)
        real.save(config["save_stats"])
        result["saved_stats"] = config["save_stats"]
    if config["out"] and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(config["out"])), exist_ok=True)
        write_json_atomically(config["out"], finite_or_none(result))
    return result


def result_line(result):
    """The one line of text: 'FVD16 123.45  KVD16 0.0123  (2048 real / 2048 fake videos, I3D 1a2b3c4d)'."""
    fvd_name = result["metric"]
    kvd_name = "K" + fvd_name[1:]
    kvd = result[kvd_name]
    text = f"{fvd_name} {result[fvd_name]:.2f}  {kvd_name} " + ("n/a" if kvd is None else f"{kvd:.4f}")
    if "bootstrap" in result:
        boot = result["bootstrap"]
        text += f"  bootstrap std {boot['std']:.2f}, 95% {boot['p2.5']:.2f} to {boot['p97.5']:.2f}"
    return (f"{text}  ({result['real']['count']} real / {result['fake']['count']} fake videos, I3D "
            f"{result['protocol']['detector_sha256'][:8]})")
