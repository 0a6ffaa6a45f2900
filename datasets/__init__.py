"""Cache formats, clip sampling, the streaming loader and the uncached video path."""
from .cache import open_cache

__all__ = ["open_cache"]
