"""Training: `latte train` and `latte train-vae`, from a config to weights.

    config.py      the training keys (MindONE's names): types, ranges, defaults, resume rules
    loop.py        `latte train`: devices, loader, model, step, resume, the loop, checkpoints, log
    step.py        the compiled step (TrainStep): gradients, loss scale, clipping, AdamW, EMA, accumulation
    checkpoint.py  atomic run checkpoints with checksums, and choosing the one to resume
    vae.py         `latte train-vae`: a small AutoencoderKL on an ingest manifest's frames
"""
