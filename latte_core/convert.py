"""Conversion of official checkpoints into MindSpore files that load strictly into our models."""
import logging
import os

from .checkpoint import CheckpointError, match_state_dict, read_state_dict, save_weights
from .latte import LATTE_MODELS, Latte, latte_config_from_state_dict
from .vae import AutoencoderKL, vae_config_from_state_dict, vae_state_to_diffusers_names

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
    except (IndexError, ZeroDivisionError):  # a tensor of the wrong rank or of size 0
        raise CheckpointError(f"{source}: not a Latte checkpoint (a tensor has an unexpected rank or size)") from None
    if model_name is not None:
        if model_name not in LATTE_MODELS:
            raise CheckpointError(f"unknown Latte variant {model_name!r}; choose one of {', '.join(LATTE_MODELS)}")
        expected = LATTE_MODELS[model_name]
        found = {key: config[key] for key in expected}
        if found != expected:
            raise CheckpointError(f"{source} is not a {model_name} checkpoint: its weights have {found}, "
                                  f"{model_name} has {expected}")
    try:
        model = Latte(**config)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise CheckpointError(f"{source}: its weights describe no buildable Latte ({config}: {err})") from None
    params = {p.name: p for p in model.get_parameters()}
    matched = match_state_dict(params, state, source)
    save_weights(matched, target)
    logger.info("converted %s -> %s (%d tensors)", source, target, len(matched))
    return config


# ------------------------------------------------------------------------------------------ VAE
def convert_vae(source, target, config=None):
    """Convert an AutoencoderKL (a diffusers folder, or one weights file in the diffusers or LDM
    layout) to a MindSpore .ckpt/.safetensors holding diffusers names. `config` (a dict) overrides
    the architecture read off the weights. Returns the config; writes nothing unless every key fits."""
    source = os.fspath(source)
    if os.path.isdir(source):
        vae = AutoencoderKL.from_pretrained(source)
        params = {p.name: p.asnumpy() for p in vae.get_parameters()}
        save_weights(params, target)
        return vae.config
    weights = read_state_dict(source)
    try:
        state = vae_state_to_diffusers_names(weights)
        settings = vae_config_from_state_dict(state)
    except ValueError as err:  # e.g. a name without its level number
        raise CheckpointError(f"{source}: {err}") from None
    except IndexError:
        raise CheckpointError(f"{source}: not an AutoencoderKL checkpoint (a tensor has an unexpected rank)") from None
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"the --config given for {source} must be a JSON object, got {type(config).__name__}")
    try:
        vae = AutoencoderKL.from_config({**settings, **(config or {})},
                                        source if config is None else f"{source} with the given config")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    params = {p.name: p for p in vae.get_parameters()}
    save_weights(match_state_dict(params, state, source), target)
    logger.info("converted %s -> %s", source, target)
    return vae.config
