"""`latte report CACHE`: what a cache holds, what failed, where the time went; --verify re-hashes shards.
`latte report CURATE_DIR`: the curation's funnel (videos -> cuts -> clips -> kept, the clips dropped per
reason); --plot draws its clip lengths and motion, --verify re-hashes the units."""
import json
import os

import numpy as np
import pyarrow.parquet as pq

from latte_core.atomic import sha256_of
from latte_core.plot import plot_histograms, plot_phase_seconds
from latte_toolkit.datasets.cache import (NULL_TEXT_FILE, TEXT_ENCODER_FILE, check_cache, check_finite,
                                          check_null_text_embedding, non_finite_values, read_ledger)

from .curate import count_reasons


def is_curate_folder(folder):
    return os.path.isfile(os.path.join(folder, "curate.json"))


def curate_report(folder, verify=False):
    """The funnel of a curate folder: from its tables when the job finished, else from its ledger (clips
    before the duplicate check, which runs at the end)."""
    folder = os.path.abspath(folder)
    records = read_ledger(folder)
    kept, dropped = _curate_tables(folder)
    finished = kept is not None
    report = {
        "curate": folder, "finished": finished, "units": len(records), "videos": sum(r["videos"] for r in records),
        "failed_videos": sum(r["failed"] for r in records), "frames": sum(r["frames"] for r in records),
        "cuts": sum(r["cuts"] for r in records), "clips": sum(r["clips"] + r["filtered"] for r in records),
        "kept": len(kept) if finished else sum(r["clips"] for r in records),
        "kept_frames": sum(row["num_frames"] for row in kept) if finished else None,
        "dropped_by_reason": count_reasons(dropped) if finished else None,
        "seconds_by_phase": {phase: round(sum(r["seconds"][phase] for r in records), 3)
                             for phase in ("decode", "analyse", "write")},
    }
    if verify:
        report["corrupt_units"] = [
            f"{record['unit_id']}: differs from its ledger checksum" for record in records
            if _sha256_or_none(os.path.join(folder, "units", f"{record['unit_id']}.parquet")) != record["sha256"]]
        report["verified_units"] = len(records) - len(report["corrupt_units"])
    return report


def _sha256_or_none(path):
    return sha256_of(path) if os.path.isfile(path) else None


def _curate_tables(folder):
    """(kept rows, dropped rows) of a finished curate folder, (None, None) before it finished."""
    if not os.path.isfile(os.path.join(folder, "clips.parquet")):
        return None, None
    return (pq.read_table(os.path.join(folder, "clips.parquet")).to_pylist(),
            pq.read_table(os.path.join(folder, "filtered.parquet")).to_pylist())


def plot_curate_histograms(folder, path):
    """`latte report CURATE_DIR --plot PNG`: the clips' lengths and motion, kept and dropped, stacked."""
    kept, dropped = _curate_tables(os.path.abspath(folder))
    if kept is None:
        raise FileNotFoundError(f"{folder}: the curate job has not finished (no clips.parquet): nothing to plot yet")
    panels = [(name, {"kept": [row[column] for row in kept], "dropped": [row[column] for row in dropped]})
              for name, column in (("clip length (frames)", "num_frames"),
                                   ("motion (px/frame at a 128-px short side)", "motion"))]
    return plot_histograms(panels, path, f"{os.path.basename(os.path.abspath(folder))}: {len(kept)} clips kept, "
                                         f"{len(dropped)} dropped")


def plot_cache_phases(folder, path):
    """`latte report --plot PNG`: each committed shard's seconds decoding, encoding and writing."""
    records = read_ledger(os.path.abspath(folder))
    shards = [(record["unit_id"], record["seconds"]) for record in records]
    total = sum(sum(seconds.values()) for _, seconds in shards)
    return plot_phase_seconds(shards, path, f"{os.path.basename(os.path.abspath(folder))}: {len(shards)} shards, "
                                            f"{total:.1f} s")


def cache_report(folder, verify=False):
    folder = os.path.abspath(folder)
    if not os.path.isfile(os.path.join(folder, "cache.json")):
        raise FileNotFoundError(f"{folder}: not a cache folder (no cache.json)")
    with open(os.path.join(folder, "cache.json")) as handle:
        info = json.load(handle)
    records = read_ledger(folder)
    failures = {}
    failures_path = os.path.join(folder, "failures.parquet")
    if os.path.isfile(failures_path):
        for row in pq.read_table(failures_path).to_pylist():
            failures[row["category"]] = failures.get(row["category"], 0) + 1
    cache_bytes = sum(r["disk_bytes"] for r in records)
    source_bytes = sum(r.get("source_bytes", 0) for r in records)
    report = {
        "cache": folder, "format": info["format"], "store": info["store"], "dtype": info["dtype"],
        "image_size": info["image_size"], "shards": len(records), "videos": sum(r["videos"] for r in records),
        "frames": sum(r["frames"] for r in records), "bytes": cache_bytes, "source_bytes": source_bytes,
        "cache_to_source_bytes": round(cache_bytes / source_bytes, 4) if source_bytes else None,
        "failed": sum(failures.values()), "failed_by_category": failures,
        "seconds_by_phase": {phase: round(sum(r["seconds"][phase] for r in records), 3)
                             for phase in ("decode", "encode", "write")},
        "finished": os.path.isfile(os.path.join(folder, "index.parquet")),
    }
    if "text_encoder_sha256" in info:
        report["text"] = _text_report(folder, info, records)
    if verify:
        index_path = os.path.join(folder, "index.parquet")  # absent while the cache job has not finished
        entries = pq.read_table(index_path).to_pylist() if os.path.isfile(index_path) else []
        problems = check_cache(folder, entries, records, "full")
        report["verified_shards"] = sum(record["unit_id"] not in problems for record in records)
        report["corrupt_shards"] = [f"{shard}: {problem}" for shard, problem in sorted(problems.items())]
        null_problem = "text_encoder_sha256" in info and check_null_text_embedding(folder)
        if null_problem:  # the shards' check covers the caption embeddings; this is the cache's one file
            report["corrupt_shards"].append(f"the empty prompt's embedding: {null_problem}")
        # values the dtype could not hold (a cache written before `latte cache` refused them): the shards
        # match their checksums, and training would stop at its first such batch
        report["non_finite"] = [f"{video_id}: {problem}" for video_id, problem in
                                sorted(check_finite(folder, info, records, skip=problems).items())]
        if "text_encoder_sha256" in info and not null_problem:
            found = non_finite_values({"embedding": np.load(os.path.join(folder, NULL_TEXT_FILE))})
            if found:
                report["non_finite"].append(f"{NULL_TEXT_FILE}: {found} are not finite")
    return report


def _text_report(folder, info, records):
    """The text encoder and the caption counts of a cache of caption embeddings."""
    path = None
    if os.path.isfile(os.path.join(folder, TEXT_ENCODER_FILE)):
        with open(os.path.join(folder, TEXT_ENCODER_FILE)) as handle:
            path = json.load(handle).get("path")
    texts = [record["text"] for record in records]
    return {"text_encoder": path, "text_encoder_sha256": info["text_encoder_sha256"],
            "width": info["text_embed_dim"], "videos_without_caption": sum(t["without_caption"] for t in texts),
            "captions_encoded": sum(t["captions_encoded"] for t in texts),
            "seconds": round(sum(t["seconds"] for t in texts), 3)}
