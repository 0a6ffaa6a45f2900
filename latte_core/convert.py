"""Conversion of official checkpoints into MindSpore files that load strictly into our models."""
import logging
import os

from .checkpoint import CheckpointError, match_state_dict, read_state_dict, save_weights
from .latte import LATTE_MODELS, Latte, latte_config_from_state_dict

logger = logging.getLogger(__name__)

SIN_COS_TABLES = ("pos_embed", "temp_embed")


def convert_latte(source, target, model_name=None):
    """Convert an official Latte checkpoint (.pt/.pth/.bin/.safetensors/.ckpt) to `target`
    (.ckpt or .safetensors). With `model_name` the weights must be that variant. Returns the
    architecture read off the weights. Nothing is written unless every key fits."""
    source = os.fspath(source)
    state = read_state_dict(source)
    try:
        config = latte_config_from_state_dict(state)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    if model_name is not None:
        if model_name not in LATTE_MODELS:
            raise CheckpointError(f"unknown Latte variant {model_name!r}; choose one of {', '.join(LATTE_MODELS)}")
        expected = LATTE_MODELS[model_name]
        found = {key: config[key] for key in expected}
        if found != expected:
            raise CheckpointError(f"{source} is not a {model_name} checkpoint: its weights have {found}, "
                                  f"{model_name} has {expected}")
    model = Latte(**config)
    params = {p.name: p for p in model.get_parameters()}
    matched = match_state_dict(params, state, source)
    save_weights(matched, target)
    logger.info("converted %s -> %s (%d tensors)", source, target, len(matched))
    return config
