"""Model math for Latte: the transformer, attention backends, Gaussian diffusion and its samplers, the
VAE, the CLIP text encoder, torch-free checkpoint reading and conversion, the CPU kernels; plus the two
error kinds every stage raises (errors.py) and atomic file publishing (atomic.py).

The public names load on first use, so `latte_core.errors` (imported by every stage) does not pull in
MindSpore where a stage has no use for it (ingest, its decode children).
"""
import importlib

_PUBLIC = {"GaussianDiffusion": "diffusion", "create_diffusion": "diffusion", "SAMPLERS": "samplers",
           "create_sampler": "samplers", "LATTE_MODELS": "latte",
           "Latte": "latte", "create_latte": "latte", "AutoencoderKL": "vae",
           "TextEncoder": "text_encoder"}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'latte_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
