"""Cache formats, clip sampling, the streaming loader and the uncached video path."""
