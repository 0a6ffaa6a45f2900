"""The data every stage shares: videos and frame folders (probes, decoding, the crop rule, writing MP4,
GIF and frames), the latent cache formats (each format's shard writer and reader side by side, the
ledger and shard checks, `open_cache(folder)` for any format), and the streaming loaders that turn a
cache (CacheLoader) or the videos themselves, encoded as they are read (VideoLoader), into batches.
"""


def __getattr__(name):
    # `datasets.open_cache` without importing the cache modules (and pyarrow) with every submodule: the
    # formats registry, which `latte --help` reads, imports no format library (tests/datasets/test_formats.py);
    # .cache and pyarrow add 0.05-0.1 s to `latte --help`
    if name == "open_cache":
        from .cache import open_cache
        return open_cache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
