"""The `latte` command line and what it runs beyond training: the resumable batch jobs (ingest, cache)
with their ledger and runners, `latte report`, `latte sample`, `latte quality`, `latte demo`, the
procedural test videos and every benchmark (`latte bench`).
"""
