"""Model math for Latte: the transformer, attention backends, diffusion and checkpoint conversion."""
from .diffusion import GaussianDiffusion, create_diffusion
from .latte import LATTE_MODELS, Latte, create_latte

__all__ = ["LATTE_MODELS", "GaussianDiffusion", "Latte", "create_diffusion", "create_latte"]
