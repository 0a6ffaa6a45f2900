"""Training: the compiled step, and (later) the loop, checkpoints and distributed set-up."""
