"""AutoencoderKL, the Stable Diffusion VAE that Latte works in, in MindSpore.

Parameter names follow diffusers' AutoencoderKL (encoder.down_blocks.{i}.resnets.{j}.norm1.weight,
encoder.mid_block.attentions.0.to_q.weight, quant_conv, post_quant_conv, ...), so published
`diffusion_pytorch_model.safetensors` files load one-to-one.

Scaling: `encode` returns the posterior in the VAE's own space and `decode` takes that space, as
diffusers does. The diffusion model sees latents multiplied by `scaling_factor` (0.18215 for
sd-vae-ft-mse); that multiplication happens only in `scale_latents` / `unscale_latents`.
"""
import json
import logging
import math
import os
import re

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Zero, initializer
from safetensors.numpy import save_file

from . import kernels
from .checkpoint import CheckpointError, load_weights
from .errors import describe_value, is_integer
from .layers import Dense
from .runtime import prefer_avx2_onednn

logger = logging.getLogger(__name__)

# diffusers config keys that shape the network, and their defaults (those of sd-vae-ft-mse)
VAE_CONFIG_DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
    "act_fn": "silu",
    "mid_block_add_attention": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "down_block_types": None,
    "up_block_types": None,
}
REQUIRED_CONFIG_KEYS = ("block_out_channels", "latent_channels")


#################################################################################
#                               Building blocks                                  #
#################################################################################

class GroupNorm(nn.Cell):
    """GroupNorm over (N, C, H, W) with parameters named weight/bias as in PyTorch, optionally followed
    by SiLU (as before every convolution of a resnet block), fused into one kernel on CPU."""

    def __init__(self, num_groups, num_channels, eps=1e-6, silu=False):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels cannot be split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.silu = silu
        self.weight = Parameter(initializer("ones", (num_channels,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (num_channels,), ms.float32), name="bias")
        self.kernel = None
        if kernels.enabled():
            self.kernel = kernels.group_norm_silu_op() if silu else kernels.group_norm_op()
        self.eps_input = kernels.scalar_input(eps)
        self.groups_marker = Tensor(np.zeros(num_groups, np.float32))

    def construct(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x, self.weight, self.bias, self.eps_input, self.groups_marker)[0]
        y = ops.group_norm(x, self.num_groups, self.weight.astype(x.dtype), self.bias.astype(x.dtype), self.eps)
        return ops.silu(y) if self.silu else y


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and names) that, on CPU with the kernels on, runs float32 inference
    through latte_core's sgemm convolution (kernels.conv2d_op); in training mode (set_train(True):
    `latte train-vae`), with another dtype or the kernels off, MindSpore's own convolution."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         pad_mode="pad" if padding else "valid", padding=padding, has_bias=True)
        self.kernel = None
        if kernels.enabled() and kernels.has_blas():
            pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
            self.kernel = kernels.conv2d_op(stride, pads)
            self.geometry = Tensor(np.array((stride,) + pads, np.float32))

    def construct(self, x):
        if self.kernel is not None and not self.training and x.dtype == ms.float32:
            return self.kernel(x, self.weight, self.bias, self.geometry)
        return super().construct(x)


def conv3x3(in_channels, out_channels, stride=1, padding=1):
    return Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding)


def conv1x1(in_channels, out_channels):
    return Conv2d(in_channels, out_channels, 1)


class ResnetBlock2D(nn.Cell):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, silu=True)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = GroupNorm(groups, out_channels, silu=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.conv_shortcut = conv1x1(in_channels, out_channels)

    def construct(self, x):
        h = self.conv1(self.norm1(x))  # norm1 and norm2 end with SiLU
        h = self.conv2(self.norm2(h))
        if self.has_shortcut:
            x = self.conv_shortcut(x)
        return x + h


class SpatialSelfAttention(nn.Cell):
    """Single-head self-attention over the H·W positions of the mid block, with a residual."""

    def __init__(self, channels, groups):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels)
        self.to_q = Dense(channels, channels)
        self.to_k = Dense(channels, channels)
        self.to_v = Dense(channels, channels)
        self.to_out = nn.CellList([Dense(channels, channels)])
        self.scale = channels ** -0.5

    def construct(self, x):
        n, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(n, c, h * w).swapaxes(1, 2)  # (N, HW, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        weights = ops.softmax(ops.matmul(q * self.scale, k.swapaxes(1, 2)), axis=-1)  # (N, HW, HW)
        out = self.to_out[0](ops.matmul(weights, v))  # (N, HW, C)
        return x + out.swapaxes(1, 2).reshape(n, c, h, w)


class MidBlock(nn.Cell):
    def __init__(self, channels, groups, add_attention=True):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(channels, channels, groups), ResnetBlock2D(channels, channels, groups)])
        self.add_attention = add_attention
        if add_attention:
            self.attentions = nn.CellList([SpatialSelfAttention(channels, groups)])

    def construct(self, x):
        x = self.resnets[0](x)
        if self.add_attention:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample2D(nn.Cell):
    """Stride-2 3x3 conv padding one pixel on the bottom and right only (diffusers pads with F.pad).

    The padding is the convolution's own (top, bottom, left, right): the gradient of a separate
    ops.pad hangs MindSpore 2.10's CPU runtime after a few dozen executions of a training graph."""

    def __init__(self, channels):
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2, padding=(0, 1, 0, 1))

    def construct(self, x):
        return self.conv(x)


class Upsample2D(nn.Cell):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def construct(self, x):
        n, c, h, w = x.shape
        x = ops.broadcast_to(x.reshape(n, c, h, 1, w, 1), (n, c, h, 2, w, 2)).reshape(n, c, h * 2, w * 2)
        return self.conv(x)


class ResnetStack(nn.Cell):
    """Resnet blocks, then optionally a 2x down- or upsampler: diffusers' DownEncoderBlock2D and
    UpDecoderBlock2D (their sub-cell names, downsamplers / upsamplers, are kept for the weights)."""

    def __init__(self, in_channels, out_channels, num_layers, groups, resample=None):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)])
        self.resample = resample
        if resample == "down":
            self.downsamplers = nn.CellList([Downsample2D(out_channels)])
        elif resample == "up":
            self.upsamplers = nn.CellList([Upsample2D(out_channels)])

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.resample == "down":
            x = self.downsamplers[0](x)
        elif self.resample == "up":
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Cell):
    """(N, 3, H, W) -> (N, 2·latent, H/f, W/f) moments, f = 2^(len(block_out_channels) - 1)."""

    def __init__(self, in_channels, latent_channels, block_out_channels, layers_per_block, groups, mid_attention):
        super().__init__()
        self.conv_in = conv3x3(in_channels, block_out_channels[0])
        blocks = []
        previous = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            last = i == len(block_out_channels) - 1
            blocks.append(ResnetStack(previous, channels, layers_per_block, groups, None if last else "down"))
            previous = channels
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = MidBlock(previous, groups, mid_attention)
        self.conv_norm_out = GroupNorm(groups, previous, silu=True)
        self.conv_out = conv3x3(previous, 2 * latent_channels)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_norm_out(x))  # norm, then SiLU


class Decoder(nn.Cell):
    """(N, latent, h, w) -> (N, 3, h·f, w·f)."""

    def __init__(self, latent_channels, out_channels, block_out_channels, layers_per_block, groups, mid_attention):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = conv3x3(latent_channels, reversed_channels[0])
        self.mid_block = MidBlock(reversed_channels[0], groups, mid_attention)
        blocks = []
        previous = reversed_channels[0]
        for i, channels in enumerate(reversed_channels):
            last = i == len(reversed_channels) - 1
            blocks.append(ResnetStack(previous, channels, layers_per_block + 1, groups, None if last else "up"))
            previous = channels
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(groups, previous, silu=True)
        self.conv_out = conv3x3(previous, out_channels)

    def construct(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(x))  # norm, then SiLU


#################################################################################
#                         Posterior and the autoencoder                          #
#################################################################################

class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)), per latent element (logvar clamped to [-30, 20])."""

    def __init__(self, mean, logvar):
        self.mean = mean
        self.logvar = ops.clamp(logvar, -30.0, 20.0)
        self.std = ops.exp(0.5 * self.logvar)

    def sample(self, noise=None):
        if noise is None:
            noise = ops.randn_like(self.mean)
        return self.mean + self.std * noise

    def mode(self):
        return self.mean


class _EncodeMoments(nn.Cell):
    def __init__(self, vae):
        super().__init__(auto_prefix=False)  # a prefix would rename the VAE's parameters to vae.*
        self.vae = vae

    def construct(self, x):
        return self.vae.encode_moments(x)


class AutoencoderKL(nn.Cell):
    """The KL-regularised autoencoder of Stable Diffusion, configured like diffusers' class."""

    def __init__(self, in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
                 layers_per_block=2, latent_channels=4, norm_num_groups=32, scaling_factor=0.18215,
                 mid_block_add_attention=True, use_quant_conv=True, use_post_quant_conv=True):
        super().__init__()
        prefer_avx2_onednn()
        block_out_channels = list(block_out_channels)
        for channels in block_out_channels:
            if channels % norm_num_groups:
                raise ValueError(f"block_out_channels {block_out_channels} must be multiples of "
                                 f"norm_num_groups {norm_num_groups}")
        self.config = dict(in_channels=in_channels, out_channels=out_channels,
                           block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                           latent_channels=latent_channels, norm_num_groups=norm_num_groups,
                           scaling_factor=scaling_factor, mid_block_add_attention=mid_block_add_attention,
                           use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv)
        self.scaling_factor = scaling_factor
        self.latent_channels = latent_channels
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)
        self.encoder = Encoder(in_channels, latent_channels, block_out_channels, layers_per_block,
                               norm_num_groups, mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, block_out_channels, layers_per_block,
                               norm_num_groups, mid_block_add_attention)
        self.use_quant_conv = use_quant_conv
        self.use_post_quant_conv = use_post_quant_conv
        if use_quant_conv:
            self.quant_conv = conv1x1(2 * latent_channels, 2 * latent_channels)
        if use_post_quant_conv:
            self.post_quant_conv = conv1x1(latent_channels, latent_channels)
        self.initialize_weights()
        # The compiled encoder entry point, built on first use; kept in a plain dict so that it is not
        # registered as a sub-cell (it holds this cell, which would make a cycle). Not `_compiled`:
        # nn.Cell sets that attribute to True whenever the cell is called in graph mode.
        self._entry_points = {}

    def set_compute_dtype(self, dtype):
        """Run convolutions and projections in `dtype` (ms.float16 or ms.float32); weights stay
        float32 and encode/decode results are returned in float32. float16 is meant for Ascend: on
        CPU it is supported but slower than float32."""
        if dtype not in (ms.float16, ms.float32):
            raise ValueError(f"compute dtype must be float16 or float32, got {dtype}")
        if dtype == ms.float16 and ms.get_context("device_target") == "CPU":
            logger.warning("float16 VAE on CPU: supported, but slower than float32 there")
        for _, cell in self.cells_and_names():
            if isinstance(cell, (nn.Conv2d, nn.Dense)):
                cell.to_float(dtype)
        self._entry_points.clear()
        return self

    def initialize_weights(self):
        for _, cell in self.cells_and_names():
            if isinstance(cell, (nn.Conv2d, nn.Dense)):
                cell.weight.set_data(initializer(HeUniform(negative_slope=5 ** 0.5), cell.weight.shape, ms.float32))
                cell.bias.set_data(initializer(Zero(), cell.bias.shape, ms.float32))

    # ------------------------------------------------------------------ images (N, 3, H, W)
    def encode_moments(self, x):
        """(N, 3, H, W) in [-1, 1] -> (N, 2·latent, h, w): posterior mean and logvar, concatenated."""
        moments = self.encoder(x)
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        return moments

    def encode(self, x):
        """(N, 3, H, W) in [-1, 1] -> the posterior over unscaled latents (N, latent, h, w)."""
        moments = self._compiled_encode()(x).astype(ms.float32)
        return DiagonalGaussian(moments[:, : self.latent_channels], moments[:, self.latent_channels:])

    def construct(self, z):
        """Calling the cell decodes (compiled as one graph in GRAPH_MODE)."""
        return self.decode(z)

    def decode(self, z):
        """Unscaled latents (N, latent, h, w) -> images (N, 3, H, W), roughly in [-1, 1]."""
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _compiled_encode(self):
        if "encode" not in self._entry_points:
            self._entry_points["encode"] = _EncodeMoments(self)
        return self._entry_points["encode"]


    # ------------------------------------------------------------------ the one place scaling happens
    def scale_latents(self, z):
        """VAE-space latents -> the diffusion model's latents."""
        return z * self.scaling_factor

    def unscale_latents(self, latents):
        """The diffusion model's latents -> VAE-space latents for decode()."""
        return latents / self.scaling_factor

    # ------------------------------------------------------------------ videos (B, F, 3, H, W)
    def encode_video(self, video, micro_batch=8):
        """(B, F, 3, H, W) in [-1, 1] -> (mean, std) numpy arrays (B, F, latent, h, w), unscaled.

        Frames are encoded `micro_batch` at a time, so memory does not grow with the video length.
        """
        video = np.asarray(video, dtype=np.float32)
        b, f = video.shape[:2]
        frames = video.reshape((b * f,) + video.shape[2:])
        means, stds = [], []
        for start in range(0, len(frames), micro_batch):
            posterior = self.encode(Tensor(frames[start:start + micro_batch]))
            means.append(posterior.mean.asnumpy())
            stds.append(posterior.std.asnumpy())
        mean, std = np.concatenate(means), np.concatenate(stds)
        return mean.reshape((b, f) + mean.shape[1:]), std.reshape((b, f) + std.shape[1:])

    def decode_video(self, z, micro_batch=8):
        """Unscaled latents (B, F, latent, h, w) -> video (B, F, 3, H, W) as numpy, in micro-batches."""
        z = np.asarray(z, dtype=np.float32)
        b, f = z.shape[:2]
        frames = z.reshape((b * f,) + z.shape[2:])
        out = np.concatenate([self(Tensor(frames[s:s + micro_batch])).asnumpy().astype(np.float32)
                              for s in range(0, len(frames), micro_batch)])
        return out.reshape((b, f) + out.shape[1:])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_config(cls, config, source="config"):
        """Build from a diffusers config dict; unknown architecture keys are refused by name, and every
        known key is checked for its type and value (see `vae_settings_from_config`)."""
        settings = vae_settings_from_config(config, source)
        try:
            return cls(**settings)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    def save_pretrained(self, folder):
        """Write a diffusers-format folder (config.json + diffusion_pytorch_model.safetensors)."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as handle:
            json.dump({"_class_name": "AutoencoderKL", **self.config}, handle, indent=1, allow_nan=False)
        save_file({p.name: p.asnumpy() for p in self.get_parameters()},
                  os.path.join(folder, "diffusion_pytorch_model.safetensors"))
        return folder

    @classmethod
    def from_pretrained(cls, folder):
        """Load a diffusers-format folder: config.json + diffusion_pytorch_model.safetensors (or .bin,
        read without torch). Either attention naming is accepted (to_q/... or query/key/value/proj_attn).
        Every fault (no such folder, no or a bad config.json, unreadable or truncated weights, a missing
        or mis-shaped tensor) is a CheckpointError naming the folder or file."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise CheckpointError(f"{folder}: no such VAE folder (expected a diffusers AutoencoderKL folder: "
                                  f"config.json + diffusion_pytorch_model.safetensors)")
        config_path = os.path.join(folder, "config.json")
        if not os.path.isfile(config_path):
            raise CheckpointError(f"{folder}: the VAE folder has no config.json (expected a diffusers "
                                  f"AutoencoderKL folder: config.json + diffusion_pytorch_model.safetensors)")
        try:
            with open(config_path) as handle:
                config = json.load(handle)
        except (ValueError, RecursionError) as err:
            raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
        except OSError as err:
            raise CheckpointError(f"{config_path}: cannot read the file ({err.strerror or err})") from None
        try:
            vae = cls.from_config(config, config_path)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                load_weights(vae, path, transform=vae_state_to_diffusers_names)
                return vae
        raise CheckpointError(f"{folder}: the VAE folder has no diffusion_pytorch_model.safetensors or .bin")


def load_vae(path):
    """The AutoencoderKL at `path`: a diffusers folder (from_pretrained), or one weights file of
    sd-vae-ft-mse's architecture (.ckpt / .safetensors / .pt, diffusers or LDM names). Every fault is a
    CheckpointError naming the folder or file. The one loader of every command that takes a VAE."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return AutoencoderKL.from_pretrained(path)
    if os.path.isfile(path):
        return load_weights(AutoencoderKL(), path, transform=vae_state_to_diffusers_names)
    raise CheckpointError(f"{path}: no such VAE folder or file (a diffusers AutoencoderKL folder, or a weights "
                          f"file of sd-vae-ft-mse's architecture)")

#################################################################################
#        Published weight layouts -> diffusers names (conversion and loading)     #
#################################################################################

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


def vae_settings_from_config(config, source="config"):
    """The AutoencoderKL constructor settings of a diffusers config dict, each key checked.

    Keys absent from the config take diffusers' defaults (VAE_CONFIG_DEFAULTS: scaling_factor 0.18215,
    as sd-vae-ft-mse's config does not state it); a key that is present must have the right type and
    a usable value: an explicit null scaling_factor (or a non-positive / non-finite one) would make
    every latent NaN. Raises ValueError naming `source`, the key and the value."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: a VAE config must be a JSON object, got {describe_value(config)}")
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
    settings = {key: config.get(key, default) for key, default in VAE_CONFIG_DEFAULTS.items()}

    def bad(key, expected):
        return ValueError(f"{source}: key {key!r} must be {expected}, got {describe_value(settings[key])}")

    for key in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        if not is_integer(settings[key]) or settings[key] < 1:
            raise bad(key, "a positive integer")
    channels = settings["block_out_channels"]
    if not isinstance(channels, (list, tuple)) or not channels or not all(is_integer(c) and c >= 1 for c in channels):
        raise bad("block_out_channels", "a non-empty list of positive integers")
    groups = settings["norm_num_groups"]
    uneven = [c for c in channels if c % groups]
    if uneven:
        raise ValueError(f"{source}: norm_num_groups {groups} does not divide block_out_channels "
                         f"{list(channels)} ({uneven[0]} channels cannot be split into {groups} groups)")
    factor = settings["scaling_factor"]
    if factor is None:
        raise ValueError(f"{source}: key 'scaling_factor' is null: give the VAE's latent scaling factor "
                         f"(0.18215 for sd-vae-ft-mse), or leave the key out for that default")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor) or factor <= 0:
        raise bad("scaling_factor", "a positive finite number")
    for key in ("mid_block_add_attention", "use_quant_conv", "use_post_quant_conv"):
        if not isinstance(settings[key], bool):
            raise bad(key, "true or false")
    if settings["act_fn"] != "silu":
        raise ValueError(f"{source}: act_fn {settings['act_fn']!r} is not supported (only 'silu')")
    for key, expected in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        kinds = settings.pop(key)
        if kinds is not None and (not isinstance(kinds, (list, tuple)) or len(kinds) != len(channels)
                                  or any(kind != expected for kind in kinds)):
            raise ValueError(f"{source}: {key} must be {len(channels)} x {expected}, got {describe_value(kinds)}")
    del settings["act_fn"]
    settings["block_out_channels"] = list(channels)
    return settings
