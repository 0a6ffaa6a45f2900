"""Stage 1b, curate: turn each ingested video into clips, frame ranges of its file (nothing re-encoded).

    INGEST_DIR/manifest.parquet ─ plan ─▶ units of `unit_size` videos (sorted by video_id; id = hash of members)
      └ each unit (any runner): decode every frame of each video once, in order, each scaled to the
        analysis size (scenes.ANALYSIS_SIZE) ─▶ scene cuts and dissolves (scenes.py) ─▶ scenes less
        `trim_frames` each side of a cut ─▶ the video's clips (scenes split at `max_clip_frames`), each
        with its motion, black bars and frame hashes (measures.py), dropped by the first filter that applies
        (_filtered) ─▶ units/<unit_id>.parquet (every clip, kept or dropped with its reason; atomic rename)
        ─▶ one ledger line (failures inside)
      └ at the end, in clip id order: near-duplicates of earlier clips dropped (mark_duplicates), then
        clips.parquet (kept), filtered.parquet (dropped: reason, score) and failures.parquet

A clip's id is its video's id and frame range (`VIDEO_ID@START-END`, END exclusive), so it names the
same frames whatever the runner or the order of units. A video that fails to decode part-way keeps the
clips that end before the damage and is also a failure row; one that fails at once is only that row.
"""
import contextlib
import json
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latte_core.atomic import sha256_of, write_atomically
from latte_core.errors import UserError, first_line
from latte_toolkit.datasets.storage import is_url, local_copy, local_job_tables, normalized
from latte_toolkit.datasets.video import UnusableInput, iter_frames_to_damage, read_manifest

from .ingest import FAILURE_SCHEMA, INGEST_VERSION, MANIFEST_SCHEMA
from .jobs import Job, read_unit_table, write_unit_table
from .runners import check_workers, prefetch
from .measures import HASHED_FRAMES, FrameMeasures, hash_distances
from .scenes import DETECT_SIZE, SceneCuts, analysis_frame, scenes

logger = logging.getLogger(__name__)

CURATE_VERSION = 1
CLIP_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("video_id", pa.string()), ("path", pa.string()), ("kind", pa.string()),
    ("start_frame", pa.int64()), ("end_frame", pa.int64()), ("num_frames", pa.int64()), ("fps", pa.float64()),
    ("height", pa.int64()), ("width", pa.int64()), ("label", pa.int64()), ("caption", pa.string()),
    ("motion", pa.float64()), ("crop_top", pa.int64()), ("crop_left", pa.int64()),
])
# filtered.parquet: the clip, why it was dropped, and the score that dropped it
FILTERED_SCHEMA = pa.schema(list(CLIP_SCHEMA) + [("reason", pa.string()), ("score", pa.float64())])
# a unit's rows: every clip, kept or not yet, with its frames' hashes for the duplicate check at the end
UNIT_SCHEMA = pa.schema(list(FILTERED_SCHEMA) + [("phash", pa.binary())])
TOO_SHORT = "too short"
LETTERBOX_MODES = ("crop", "drop", "keep")
PREFETCH_FRAMES = 8  # frames decoded ahead, in a thread, while the analysis runs


class CurateError(UserError):
    """Bad usage of the curate stage: a missing or foreign manifest, conflicting keys, a folder of another job."""


# ------------------------------------------------------------------------------------------ clips
def clip_id(video_id, start, end):
    return f"{video_id}@{start:06d}-{end:06d}"


def split_segment(start, end, min_frames, max_frames):
    """[(start, end, reason)] of one scene's frames [start, end): pieces of `max_frames` (None: one piece)
    from its start, the rest its own piece; a piece shorter than `min_frames` has reason TOO_SHORT."""
    step = max_frames or max(end - start, 1)
    pieces = [(first, min(first + step, end)) for first in range(start, end, step)]
    return [(first, last, TOO_SHORT if last - first < min_frames else None) for first, last in pieces]


def video_clips(item, frames, boundaries, measures, spec):
    """The clip rows (kept and dropped, with reason and score) of a video whose first `frames` frames
    decoded, with these scene boundaries and FrameMeasures."""
    rows = []
    pieces = [piece for start, end in scenes(frames, boundaries, spec["trim_frames"])
              for piece in split_segment(start, end, spec["min_clip_frames"], spec["max_clip_frames"])]
    for start, end, reason in pieces:
        height, width, top, left = item["height"], item["width"], 0, 0
        bars = measures.bars(start, end, height, width)
        if spec["letterbox"] == "crop" and any(bars):
            top, left = bars[0], bars[2]
            height, width = height - bars[0] - bars[1], width - bars[2] - bars[3]
        motion = round(measures.motion(start, end), 4)  # as stored: the score that drops a clip is its motion
        row = {"clip_id": clip_id(item["video_id"], start, end), "video_id": item["video_id"], "path": item["path"],
               "kind": item["kind"], "start_frame": start, "end_frame": end, "num_frames": end - start,
               "fps": item["fps"], "height": height, "width": width, "label": item["label"],
               "caption": item["caption"], "motion": motion, "crop_top": top, "crop_left": left,
               "phash": measures.hashes(start, end), "reason": reason,
               "score": float(end - start) if reason == TOO_SHORT else None}
        if reason is None:
            row["reason"], row["score"] = _filtered(min(height, width), max(bars), motion, spec)
        rows.append(row)
    return rows


def _filtered(short_side, widest_bar, motion, spec):
    """(reason, score) of the first filter that drops a clip, in this order: too small (score: the short
    side), letterbox (the widest bar, px), static and too much motion (the motion), or (None, None)."""
    if short_side < spec["min_size"]:
        return "too small", float(short_side)
    if spec["letterbox"] == "drop" and widest_bar:
        return "letterbox", float(widest_bar)
    if motion < spec["min_motion"]:
        return "static", motion
    if spec["max_motion"] is not None and motion > spec["max_motion"]:
        return "too much motion", motion
    return None, None


# ------------------------------------------------------------------------------------------ the unit
def scan_video(item, spec, timings):
    """Decode every frame of one video once, in order (in a thread, ahead of the analysis), and measure
    it: (frames decoded, scene boundaries, FrameMeasures, the UnusableInput that stopped the decode early
    or None). timings["decode"]: the seconds the analysis waited for frames."""
    frames, count, error = prefetch(iter_frames_to_damage(item["path"], item["kind"]), PREFETCH_FRAMES), 0, None
    cuts = SceneCuts(item["fps"], spec["cut_threshold"], spec["dissolve_threshold"], spec["flash_frames"])
    measures = FrameMeasures()
    with contextlib.closing(frames):  # the decoding thread stops with the scan, whatever ends it
        while True:
            started = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                break
            except UnusableInput as err:
                error = err
                break
            except Exception as err:  # a decoder's own error fails this video, not the unit
                error = UnusableInput("unreadable", f"{item['path']}: frame {count}: {first_line(err)}")
                break
            finally:
                timings["decode"] += time.perf_counter() - started
            started = time.perf_counter()
            small = analysis_frame(frame)
            tiny = analysis_frame(small, DETECT_SIZE)
            cuts.add(small, tiny)
            measures.add(small, tiny)
            timings["analyse"] += time.perf_counter() - started
            count += 1
    return count, cuts.finish(), measures, error


def curate_unit(spec):
    """Scan every video of one unit, commit units/<unit_id>.parquet, return the ledger record."""
    timings = {"decode": 0.0, "analyse": 0.0, "write": 0.0}
    rows, failures, frames, cuts = [], [], 0, 0
    for item in spec["videos"]:
        # a video in an object store is fetched to the scratch area for its scan, deleted after
        with local_copy(item["path"], item["kind"], spec.get("storage_options")) as local:
            count, boundaries, measures, error = scan_video({**item, "path": local}, spec, timings)
        if error is not None and local != item["path"]:
            error = UnusableInput(error.category, error.message.replace(local, item["path"]))
        cuts += len(boundaries)
        frames += count
        if error is not None:
            where = f" (its clips before frame {count} are kept)" if count else ""
            failures.append({"video_id": item["video_id"], "path": item["path"], "kind": item["kind"],
                             "category": error.category, "message": error.message[:300] + where})
        rows.extend(video_clips(item, count, boundaries, measures, spec))
    started = time.perf_counter()
    part = write_unit_table(spec["out_dir"], spec["unit_id"], pa.Table.from_pylist(rows, schema=UNIT_SCHEMA))
    timings["write"] += time.perf_counter() - started
    kept = sum(row["reason"] is None for row in rows)
    return {"unit_id": spec["unit_id"], "videos": len(spec["videos"]), "failed": len(failures), "frames": frames,
            "cuts": cuts, "clips": kept, "filtered": len(rows) - kept, "bytes": os.path.getsize(part),
            "sha256": sha256_of(part),
            "seconds": {phase: round(value, 4) for phase, value in timings.items()}, "failures": failures}


# ------------------------------------------------------------------------------------------ the job
def read_ingest_manifest(manifest):
    """The rows of an ingest manifest this version of curate understands: a folder whose ingest.json
    is of another version, or a manifest without the columns, is a CurateError naming it."""
    manifest = os.path.abspath(manifest)
    path = os.path.join(manifest, "manifest.parquet") if os.path.isdir(manifest) else manifest
    settings = os.path.join(os.path.dirname(path), "ingest.json")
    if os.path.isfile(settings):
        with open(settings) as handle:
            version = json.load(handle).get("version")
        if version != INGEST_VERSION:
            raise CurateError(f"{settings}: an ingest folder of version {version!r}; this curate reads version "
                              f"{INGEST_VERSION}: re-run `latte ingest` into a new folder")
    if os.path.isfile(path):
        missing = sorted(set(MANIFEST_SCHEMA.names) - set(pq.read_schema(path).names))
        if missing:
            raise CurateError(f"{path}: not an ingest manifest of this version (no column {', '.join(missing)})")
    try:
        return path, read_manifest(path)
    except UserError as err:
        raise CurateError(str(err)) from None


def check_clip_lengths(min_clip_frames, max_clip_frames, error=CurateError):
    if min_clip_frames < 1:
        raise error(f"min_clip_frames must be at least 1, got {min_clip_frames}")
    if max_clip_frames is not None and max_clip_frames < min_clip_frames:
        raise error(f"min_clip_frames ({min_clip_frames}) is larger than max_clip_frames ({max_clip_frames}): "
                    f"no clip could be kept")


def _member_key(video):
    """What names a video in its unit's id."""
    return [video["video_id"], video["path"], video["num_frames"]]


def mark_duplicates(rows, distance):
    """Drop (reason "duplicate of CLIP_ID", score: the distance) each clip not dropped yet whose frame
    hashes lie within `distance` (mean bits per frame) of an earlier kept clip's; `rows` in clip id order,
    so which copy stays does not depend on the units or the runner. None: no check."""
    if distance is None:
        return
    kept, ids = np.zeros((len(rows), 8 * HASHED_FRAMES), np.uint8), []
    for row in rows:
        if row["reason"] is not None:
            continue
        if ids:
            distances = hash_distances(row["phash"], kept[:len(ids)])
            nearest = int(np.argmin(distances))
            if distances[nearest] <= distance:
                row["reason"], row["score"] = f"duplicate of {ids[nearest]}", float(distances[nearest])
                continue
        kept[len(ids)] = np.frombuffer(row["phash"], np.uint8)
        ids.append(row["clip_id"])


def count_reasons(dropped):
    """{reason: clips} of filtered rows, every "duplicate of CLIP_ID" counted as "duplicate"."""
    counts = {}
    for row in dropped:
        reason = "duplicate" if row["reason"].startswith("duplicate of ") else row["reason"]
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def publish_clips(out_dir, records, dedup_distance):
    """clips.parquet (kept), filtered.parquet (dropped, duplicates included) and failures.parquet from the
    committed units, each sorted by clip id (video id, then first frame); returns (kept, dropped, failures)."""
    rows = sorted((row for record in records for row in read_unit_table(out_dir, record)),
                  key=lambda row: (row["video_id"], row["start_frame"]))
    mark_duplicates(rows, dedup_distance)
    kept = [{name: row[name] for name in CLIP_SCHEMA.names} for row in rows if row["reason"] is None]
    dropped = [{name: row[name] for name in FILTERED_SCHEMA.names} for row in rows if row["reason"] is not None]
    failures = sorted((row for record in records for row in record["failures"]), key=lambda row: row["video_id"])
    for name, table, schema in (("clips.parquet", kept, CLIP_SCHEMA), ("filtered.parquet", dropped, FILTERED_SCHEMA),
                                ("failures.parquet", failures, FAILURE_SCHEMA)):
        data = pa.Table.from_pylist(table, schema=schema)
        write_atomically(os.path.join(out_dir, name), lambda tmp: pq.write_table(data, tmp))
    return kept, dropped, failures


def run_curate(manifest, out_dir, min_clip_frames=16, max_clip_frames=256, trim_frames=1, cut_threshold=27.0,
               dissolve_threshold=0.05, flash_frames=4, min_motion=0.1, max_motion=None, min_size=0,
               letterbox="drop", dedup_distance=8.0, workers=1, scheduler=None, unit_size=8, progress=True,
               storage_options=None, break_lock=False):
    """Run (or resume) the curate job; returns the summary dict. Bad usage (a missing or foreign
    manifest, conflicting keys, a folder of another job) is a CurateError before anything is written.
    The manifest, its videos and `out_dir` may be object-store URLs (datasets/storage.py:
    `storage_options`, `break_lock`)."""
    check_clip_lengths(min_clip_frames, max_clip_frames)
    if unit_size < 1:
        raise CurateError(f"unit_size must be at least 1, got {unit_size}")
    if min(trim_frames, flash_frames, min_motion, min_size) < 0 or min(cut_threshold, dissolve_threshold) <= 0:
        raise CurateError("trim_frames, flash_frames, min_motion and min_size must be at least 0, cut_threshold "
                          "and dissolve_threshold positive")
    if dedup_distance is not None and dedup_distance < 0:
        raise CurateError(f"dedup_distance must be at least 0 (or null: no duplicate check), got {dedup_distance}")
    if max_motion is not None and max_motion < min_motion:
        raise CurateError(f"min_motion ({min_motion}) is larger than max_motion ({max_motion}): no clip could be kept")
    if letterbox not in LETTERBOX_MODES:
        raise CurateError(f"letterbox must be one of {', '.join(LETTERBOX_MODES)}, got {letterbox!r}")
    check_workers(workers, CurateError)
    started = time.perf_counter()
    out_dir = normalized(out_dir)
    if is_url(manifest):  # its tables fetched; the settings name the URL, whatever the scratch folder
        manifest_path, videos = read_ingest_manifest(local_job_tables(manifest, storage_options))
        recorded = normalized(manifest)
        recorded = recorded if recorded.endswith(".parquet") else f"{recorded}/manifest.parquet"
    else:
        manifest_path, videos = read_ingest_manifest(manifest)
        recorded = manifest_path
    keys = {"min_clip_frames": min_clip_frames, "max_clip_frames": max_clip_frames, "trim_frames": trim_frames,
            "cut_threshold": cut_threshold, "dissolve_threshold": dissolve_threshold, "flash_frames": flash_frames,
            "min_motion": min_motion, "max_motion": max_motion, "min_size": min_size, "letterbox": letterbox,
            "dedup_distance": dedup_distance}
    settings = {"version": CURATE_VERSION, "manifest": recorded, "manifest_sha256": sha256_of(manifest_path),
                "unit_size": unit_size, **keys}
    with Job(out_dir, "curate.json", settings, "units", CurateError, storage_options=storage_options,
             unit_paths=lambda record: [f"units/{record['unit_id']}.parquet"], break_lock=break_lock,
             keep_units_local=True) as job:
        work_dir = job.work_dir  # out_dir itself, or the local scratch of an object-store job
        pending, skipped = job.plan(videos, unit_size, _member_key, "c", "videos")
        logger.info("%d videos in %d units: %d already curated", len(videos), skipped + len(pending), skipped)
        common = {"out_dir": work_dir, "storage_options": storage_options, **keys}
        specs = [{**unit, **common} for unit in pending]
        errors = job.run(curate_unit, specs, lambda spec: sum(v["num_frames"] or 0 for v in spec["videos"]),
                         "curate", "frame", workers, scheduler, progress)
        records = job.records()
        job.localize(records)
        kept, dropped, failures = job.publish(lambda: publish_clips(work_dir, records, dedup_distance),
                                              "writing clips.parquet, filtered.parquet and failures.parquet",
                                              outputs=("filtered.parquet", "failures.parquet", "clips.parquet"))
    seconds = time.perf_counter() - started
    raised = [spec for spec in specs if spec["unit_id"] in set(errors)]
    if raised:
        logger.error("%d unit(s) raised, their videos are not curated (re-run to retry): %s", len(raised),
                     ", ".join(spec["unit_id"] for spec in raised))
    run_frames = sum(r["frames"] for r in records if r["unit_id"] in {s["unit_id"] for s in specs})
    return {"out_dir": out_dir, "videos": sum(r["videos"] for r in records), "failed": len(failures),
            "frames": sum(r["frames"] for r in records), "cuts": sum(r["cuts"] for r in records),
            "clips": len(kept), "filtered": len(dropped),
            "filtered_by_reason": count_reasons(dropped), "clip_frames": sum(row["num_frames"] for row in kept),
            "units_run": len(specs), "units_skipped": skipped, "unit_errors": errors,
            "unit_error_videos": sum(len(spec["videos"]) for spec in raised), "seconds": round(seconds, 2),
            "frames_per_s": round(run_frames / seconds, 2) if specs else 0.0}
