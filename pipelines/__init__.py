"""The staged batch jobs and their skeleton: ingest (videos -> manifest), cache (manifest -> VAE
latents), `latte report`, the job skeleton (jobs.py), the ledger and job lock (ledger.py), the runners
(in-process, dask), killable decoding (decode_worker.py), and the jobs' key tables (config.py).
Nothing here imports `train`.
"""
