"""Cache formats, clip sampling, the streaming loader and the uncached video path."""


def __getattr__(name):
    # `datasets.open_cache` without importing the cache modules (and pyarrow) with every submodule
    if name == "open_cache":
        from .cache import open_cache
        return open_cache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
