"""`latte report CACHE`: what a cache holds, what failed, where the time went; --verify re-hashes shards."""
import json
import os

import pyarrow.parquet as pq

from latte_core.plot import plot_phase_seconds
import numpy as np

from latte_toolkit.datasets.cache import (NULL_TEXT_FILE, TEXT_ENCODER_FILE, check_cache, check_finite,
                                          check_null_text_embedding, non_finite_values, read_ledger)


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
