"""Conversion of official checkpoints into MindSpore files that load strictly into our models."""
import logging
import os
import re

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
_LDM_RULES = [  # original latent-diffusion names -> diffusers names (the up blocks are re-indexed apart)
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsamplers.0.conv."),
    (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v)\.", r"\1.mid_block.attentions.0.to_\2."),
    (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
]
# older diffusers releases (and the published sd-vae-ft-mse files) name the mid-block attention so
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# parts of full Stable Diffusion / LDM training checkpoints that are not the autoencoder
_LDM_EXTRAS = ("loss.", "model_ema.")


def _ldm_to_diffusers(state):
    up_ids = {int(k.split(".")[2]) for k in state if k.startswith("decoder.up.")}
    last = max(up_ids) if up_ids else 0
    renamed = {}
    for name, value in state.items():
        if name.startswith(_LDM_EXTRAS):
            continue
        match = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(.*)$", name)
        if match:  # LDM counts decoder levels from the lowest resolution up; diffusers the other way
            index, kind, rest = last - int(match[1]), match[2], match[3]
            name = f"decoder.up_blocks.{index}." + (f"resnets.{rest}" if kind == "block" else f"upsamplers.0.{rest}")
        for pattern, replacement in _LDM_RULES:
            name = re.sub(pattern, replacement, name)
        renamed[name] = value
    return renamed


def vae_state_to_diffusers_names(state):
    """Weights of an AutoencoderKL in any published layout -> diffusers names and shapes.

    Accepts diffusers names with either attention naming, and the original single-file LDM layout
    (encoder.down.0.block.0.norm1..., optionally under first_stage_model.). Attention projections
    stored as 1x1 convolutions become matrices.
    """
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    if any(k.startswith(("encoder.down.", "encoder.mid.", "decoder.up.")) for k in state):
        state = _ldm_to_diffusers(state)
    renamed = {}
    for name, value in state.items():
        parts = name.split(".")
        if "attentions" in parts:
            position = parts.index("attentions") + 2
            if position < len(parts) and parts[position] in _OLD_ATTENTION_NAMES:
                parts[position] = _OLD_ATTENTION_NAMES[parts[position]]
            if position < len(parts) and parts[position] != "group_norm" and parts[-1] == "weight" and value.ndim == 4:
                value = value.reshape(value.shape[:2])
        renamed[".".join(parts)] = value
    return renamed


def vae_config_from_state_dict(state, norm_num_groups=32):
    """diffusers config of the AutoencoderKL owning these (diffusers-named) weights.
    The group count is not visible in the weights: 32, as in every published SD VAE, unless given."""
    def shape(name):
        if name not in state:
            raise ValueError(f"not an AutoencoderKL checkpoint: no {name!r}")
        return tuple(state[name].shape)

    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks.")})
    if not levels:
        raise ValueError("not an AutoencoderKL checkpoint: no encoder.down_blocks")
    block_out_channels = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in levels]
    layers = len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")})
    return dict(
        in_channels=shape("encoder.conv_in.weight")[1], out_channels=shape("decoder.conv_out.weight")[0],
        block_out_channels=block_out_channels, layers_per_block=layers,
        latent_channels=shape("decoder.conv_in.weight")[1], norm_num_groups=norm_num_groups,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in state,
        use_quant_conv="quant_conv.weight" in state, use_post_quant_conv="post_quant_conv.weight" in state,
    )


def convert_vae(source, target, config=None):
    """Convert an AutoencoderKL (a diffusers folder, or one weights file in the diffusers or LDM
    layout) to a MindSpore .ckpt/.safetensors holding diffusers names. `config` (a dict) overrides
    the architecture read off the weights. Returns the config; writes nothing unless every key fits."""
    from .vae import AutoencoderKL

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
