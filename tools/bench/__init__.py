"""`latte bench ...`: every benchmark, one module per subject, each printing one JSON line, over one
shared measuring module (measure.py: fresh processes, kernel paths, peak RSS, numpy's sgemm floor).

    ingest.py, cache.py, loader.py   the pipeline stages against their plain baselines
    step.py, forward.py, vae.py      the compiled training step, the denoising forward, the VAE encoder
    attention.py                     attention memory, plain against block-wise

Step, forward and VAE timings run each kernel path (latte_core.kernels on / off) in a fresh process, so
that both are measured in the same run with their own compile caches and peak RSS. The commands'
key tables are in tools/config.py.
"""
