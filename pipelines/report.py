"""`latte report CACHE`: what a cache holds, what failed, where the time went; --verify re-hashes shards."""
import json
import os

import pyarrow.parquet as pq

from latte_toolkit.datasets.cache import check_shards, read_ledger


def plot_cache_phases(folder, path):
    """`latte report --plot PNG`: each committed shard's seconds decoding, encoding and writing."""
    from latte_toolkit.train.plot import plot_phase_seconds
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
    if verify:
        problems = check_shards(folder, records, "full")
        report["verified_shards"] = len(records) - len(problems)
        report["corrupt_shards"] = [f"{shard}: {problem}" for shard, problem in sorted(problems.items())]
    return report
