"""`latte report CACHE`: what a cache holds, what failed, where the time went; --verify re-hashes shards."""
import json
import os

import pyarrow.parquet as pq

from .cache import shard_digest
from .ledger import Ledger


def cache_report(folder, verify=False):
    folder = os.path.abspath(folder)
    if not os.path.isfile(os.path.join(folder, "cache.json")):
        raise FileNotFoundError(f"{folder}: not a cache folder (no cache.json)")
    with open(os.path.join(folder, "cache.json")) as handle:
        info = json.load(handle)
    records = Ledger(folder).records()
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
        bad = []
        for record in records:
            shard = os.path.join(folder, "shards", record["unit_id"])
            if not os.path.isdir(shard):
                bad.append(f"{record['unit_id']}: missing")
                continue
            digest, size = shard_digest(shard)
            if digest != record["sha256"] or size != record["bytes"]:
                bad.append(f"{record['unit_id']}: {size} bytes, sha256 {digest[:12]}… differ from the ledger's "
                           f"{record['bytes']} bytes, {record['sha256'][:12]}…")
        report["verified_shards"] = len(records) - len(bad)
        report["corrupt_shards"] = bad
    return report
