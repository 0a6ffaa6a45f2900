"""Model math for Latte: the transformer, attention backends, diffusion, the VAE and checkpoint conversion."""
from .diffusion import GaussianDiffusion, create_diffusion
from .latte import LATTE_MODELS, Latte, create_latte
from .vae import AutoencoderKL

__all__ = ["LATTE_MODELS", "AutoencoderKL", "GaussianDiffusion", "Latte", "create_diffusion", "create_latte"]
