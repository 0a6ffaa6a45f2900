"""Latte: latent diffusion transformer for video (Ma et al., 2024, arXiv 2401.03048), in MindSpore.

Laid out like the official model file so that parameter names map one-to-one onto official
checkpoints: x_embedder, t_embedder, y_embedder / text_embedding_projection, pos_embed, temp_embed,
blocks (even = spatial, odd = temporal), final_layer.
"""
import logging
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, XavierUniform, Zero, initializer

from .attention import Attention, describe_attention_backend
from .errors import is_integer
from .layers import Dense, EmbeddingTable, GatedResidual, Mlp, ModulatedLayerNorm
from .runtime import prefer_avx2_onednn

logger = logging.getLogger(__name__)

CONDITIONS = (None, "class", "text")
PATCH_EMBEDDERS = ("conv", "linear")
TEXT_TOKENS, TEXT_DIM = 77, 768  # the reference's CLIP text embedding shape (CLIP-L's width by default)


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


#################################################################################
#               Embedding layers for patches, timesteps and class labels        #
#################################################################################

class PatchEmbed(nn.Cell):
    """(N, C, H, W) -> (N, T, D) with T = (H/p)·(W/p), row-major over the patch grid.

    "conv" is the reference's strided Conv2d; "linear" is a Dense over flattened (C, p, p) patches
    (MindONE's choice for bfloat16 on Ascend). Both store `proj.weight`; a conv weight (D, C, p, p)
    reshapes into the linear one (D, C·p·p).
    """

    def __init__(self, input_size, patch_size, in_channels, hidden_size, kind="conv"):
        super().__init__()
        self.grid = tuple(s // patch_size for s in _pair(input_size))
        self.num_patches = self.grid[0] * self.grid[1]
        self.patch_size = patch_size
        self.kind = kind
        if kind == "conv":
            self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size,
                                  pad_mode="valid", has_bias=True)
        else:
            self.proj = Dense(in_channels * patch_size * patch_size, hidden_size)

    def construct(self, x):
        n, c, h, w = x.shape
        p = self.patch_size
        if self.kind == "conv":
            x = self.proj(x)  # (N, D, h/p, w/p)
            return x.reshape(n, x.shape[1], -1).swapaxes(1, 2)  # (N, T, D)
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (N, h/p, w/p, C, p, p)
        return self.proj(x.reshape(n, (h // p) * (w // p), c * p * p))  # (N, T, D)


class TimestepEmbedder(nn.Cell):
    """Scalar timesteps -> (N, D) through sinusoidal frequencies and a 2-layer MLP."""

    def __init__(self, hidden_size, frequency_embedding_size=256, max_period=10000):
        super().__init__()
        self.mlp = nn.SequentialCell(
            Dense(frequency_embedding_size, hidden_size), nn.SiLU(), Dense(hidden_size, hidden_size))
        half = frequency_embedding_size // 2
        self.freqs = Tensor(np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half))
        self.odd = frequency_embedding_size % 2

    def construct(self, t):
        args = t.astype(ms.float32).expand_dims(1) * self.freqs.expand_dims(0)  # (N, half)
        emb = ops.concat([ops.cos(args), ops.sin(args)], axis=-1)
        if self.odd:
            emb = ops.concat([emb, ops.zeros_like(emb[:, :1])], axis=-1)
        return self.mlp(emb)  # (N, D)


class LabelEmbedder(nn.Cell):
    """Class labels -> (N, D); with dropout_prob > 0 the extra row num_classes is the null class used
    for label dropout during training and for classifier-free guidance."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.embedding_table = EmbeddingTable(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def construct(self, labels, force_drop_ids=None):
        if force_drop_ids is not None:
            labels = ops.where(force_drop_ids == 1, ops.full_like(labels, self.num_classes), labels)
        elif self.training and self.dropout_prob > 0:
            drop = ops.rand(labels.shape) < self.dropout_prob
            labels = ops.where(drop, ops.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


#################################################################################
#                                 Core Latte model                               #
#################################################################################

class TransformerBlock(nn.Cell):
    """A transformer block with adaptive LayerNorm-Zero conditioning (DiT).

    The conditioning c is per sample (B, D) (or per frame): the modulation is computed once per sample
    and applied to each of the sample's frames or token positions by the norm and residual layers,
    which never expand it (the reference computes the same values on every repeated row: 8-64x the
    adaLN matmul work here). x is (B·F, T, D) for both kinds of block; a temporal block (over_frames)
    attends across each sample's F frames at every token position, its c per sample (B, D)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, attention_backend="plain", over_frames=False):
        super().__init__()
        self.norm1 = ModulatedLayerNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, backend=attention_backend,
                              over_frames=over_frames)
        self.norm2 = ModulatedLayerNorm(hidden_size)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.SequentialCell(nn.SiLU(), Dense(hidden_size, 6 * hidden_size))
        self.residual = GatedResidual()

    def construct(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.chunk(
            self.adaLN_modulation(c), 6, axis=1)  # each (B, D), for x's N = B·R rows
        h = self.attn(self.norm1(x, shift_msa, scale_msa), c.shape[0])  # samples: used across frames only
        x = self.residual(x, gate_msa, h)  # x + gate·attn(norm1(x))
        x = self.residual(x, gate_mlp, self.mlp(self.norm2(x, shift_mlp, scale_mlp)))
        return x  # (N, T, D)


class FinalLayer(nn.Cell):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = ModulatedLayerNorm(hidden_size)
        self.linear = Dense(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.SequentialCell(nn.SiLU(), Dense(hidden_size, 2 * hidden_size))

    def construct(self, x, c):
        shift, scale = ops.chunk(self.adaLN_modulation(c), 2, axis=1)  # c (B, D) or (N, D)
        return self.linear(self.norm_final(x, shift, scale))  # (N, T, p·p·C_out)


class Latte(nn.Cell):
    """Video diffusion transformer with interleaved spatial and temporal blocks.

    Forward: x (B, F, C, H, W) latents, t (B,) timesteps, y (B,) class labels for condition="class",
    text_embedding (B, 77, text_embed_dim) for condition="text" (a CLIP encoder's last_hidden_state;
    768 for CLIP-L as the reference, 1024 for SD 2.x's OpenCLIP-H) -> (B, F, C_out, H, W), C_out = 2·C
    with learn_sigma (epsilon, then the variance interpolation values). With the keyword use_image_num = I
    the last I of F + I frames are images for image-video joint training (see construct).
    """

    def __init__(
        self,
        input_size=32,
        patch_size=2,
        in_channels=4,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        num_frames=16,
        class_dropout_prob=0.1,
        num_classes=1000,
        learn_sigma=True,
        condition=None,
        patch_embedder="conv",
        enable_flash_attention=False,
        text_embed_dim=TEXT_DIM,
    ):
        super().__init__()
        prefer_avx2_onednn()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        if patch_embedder not in PATCH_EMBEDDERS:
            raise ValueError(f"patch_embedder must be one of {PATCH_EMBEDDERS}, got {patch_embedder!r}")
        if depth % 2:
            raise ValueError(f"depth {depth}: {DEPTH_RULE}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 for the 2-D sin-cos embedding, got {hidden_size}")
        if any(s % patch_size for s in _pair(input_size)):
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if not is_integer(text_embed_dim) or text_embed_dim < 1:
            raise ValueError(f"text_embed_dim must be a positive integer, got {text_embed_dim!r}")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_frames = num_frames
        self.hidden_size = hidden_size
        self.condition = condition
        self.text_embed_dim = text_embed_dim
        attention_backend = "flash" if enable_flash_attention else "plain"
        logger.info("Latte uses %s", describe_attention_backend(enable_flash_attention))

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, kind=patch_embedder)
        self.t_embedder = TimestepEmbedder(hidden_size)
        if condition == "class":
            self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        elif condition == "text":
            self.text_embedding_projection = nn.SequentialCell(
                nn.SiLU(), Dense(TEXT_TOKENS * text_embed_dim, hidden_size))
        self.grid = self.x_embedder.grid
        self.pos_embed = Parameter(
            Tensor(get_2d_sincos_pos_embed(hidden_size, self.grid)[None], ms.float32),
            name="pos_embed", requires_grad=False)
        self.temp_embed = Parameter(
            Tensor(get_1d_sincos_temp_embed(hidden_size, num_frames)[None], ms.float32),
            name="temp_embed", requires_grad=False)
        self.blocks = nn.CellList([
            TransformerBlock(hidden_size, num_heads, mlp_ratio, attention_backend, over_frames=i % 2 == 1)
            for i in range(depth)])  # spatial, temporal, spatial, ...
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """The reference initialisation: Xavier-uniform Dense layers, zeroed adaLN and output layers."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                cell.weight.set_data(initializer(XavierUniform(), cell.weight.shape, ms.float32))
                cell.bias.set_data(initializer(Zero(), cell.bias.shape, ms.float32))
        proj = self.x_embedder.proj
        fan_out = proj.weight.shape[0]
        fan_in = int(np.prod(proj.weight.shape[1:]))
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier on the flattened kernel, as for a Dense
        proj.weight.set_data(Tensor(np.random.uniform(-bound, bound, proj.weight.shape), ms.float32))
        proj.bias.set_data(initializer(Zero(), proj.bias.shape, ms.float32))
        for dense in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            dense.weight.set_data(initializer(Normal(0.02), dense.weight.shape, ms.float32))
        zeroed = [block.adaLN_modulation[1] for block in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[1], self.final_layer.linear]
        for dense in zeroed:
            dense.weight.set_data(initializer(Zero(), dense.weight.shape, ms.float32))
            dense.bias.set_data(initializer(Zero(), dense.bias.shape, ms.float32))

    def unpatchify(self, x):
        """(N, T, p·p·C) -> (N, C, H, W)."""
        c = self.out_channels
        p = self.patch_size
        gh, gw = self.grid
        x = x.reshape(x.shape[0], gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (N, C, gh, p, gw, p)
        return x.reshape(x.shape[0], c, gh * p, gw * p)

    def construct(self, x, t, y=None, text_embedding=None, force_drop_ids=None, *, use_image_num=0,
                  y_image=None, force_drop_ids_image=None):
        """x (B, F + I, C, H, W) -> (B, F + I, C_out, H, W); I = use_image_num (a Python int, 0 by default).

        With use_image_num = I > 0 ("Latte + IMG", image-video joint training, as the reference's
        models/latte_img.py) the last I frames of x are still images, e.g. from other videos: the spatial
        blocks see all F + I frames, the temporal blocks and temp_embed only the F video frames (the
        images pass through the temporal blocks unchanged). F must be num_frames. Conditioning c:
          - spatial blocks and final layer: per frame, t + y for the video frames and t + y_image[:, j]
            for image j; the temporal blocks get t + y (one per sample).
          - condition="class": y_image (B, I) holds each image's own label, embedded by the same
            y_embedder. force_drop_ids_image (B, I) (1 = use the null class) drops image labels as
            force_drop_ids (B,) does the video's; without it, training drops them at random as the
            reference does: one draw per sample for all of its images (torch.rand(labels.shape[0]) on
            its (1, I) labels), independent of the video label's draw. The reference embeds y_image in
            training only; here it is used in both modes (sampling uses I = 0 anyway).
          - condition="text" (ours: the reference's text branch does not run): text_embedding
            (B, 1 + I, 77, 768), the video's caption, then one caption per image. The temporal blocks
            get t + caption 0; the final layer t alone (as for text at I = 0).
          - no condition: c = t for every block and frame.
        use_image_num = 0 is the plain video model, the very same computation.
        """
        b, f, c, h, w = x.shape
        if isinstance(use_image_num, bool) or not isinstance(use_image_num, int) or use_image_num < 0:
            raise ValueError(f"use_image_num must be a non-negative int, got {use_image_num!r}")
        if use_image_num and f != self.num_frames + use_image_num:
            raise ValueError(f"use_image_num={use_image_num}: x has {f} frames, the model expects "
                             f"num_frames + use_image_num = {self.num_frames} + {use_image_num}")
        frames = f - use_image_num  # F video frames, then I images
        tokens = self.x_embedder.num_patches
        x = self.x_embedder(x.reshape(b * f, c, h, w)) + self.pos_embed  # (B·(F+I), T, D)
        t_emb = self.t_embedder(t)  # (B, D)
        cond = t_emb
        if self.condition == "class":
            cond = cond + self.y_embedder(y, force_drop_ids)
        cond_blocks = cond
        if self.condition == "text":
            if text_embedding is None:
                raise ValueError("condition='text' needs text_embedding")
            if text_embedding.shape[-1] != self.text_embed_dim or text_embedding.shape[-2] != TEXT_TOKENS:
                raise ValueError(f"text_embedding of width {text_embedding.shape[-1]} given, the model expects width "
                                 f"{self.text_embed_dim} (its text_embed_dim): shape (..., {TEXT_TOKENS}, "
                                 f"{self.text_embed_dim}), got {text_embedding.shape}")
            # The reference conditions the final layer on the timestep alone for text (on t + y for classes).
            if use_image_num:
                if text_embedding.ndim != 4 or text_embedding.shape[1] != 1 + use_image_num:
                    raise ValueError(f"use_image_num={use_image_num} with condition='text' needs text_embedding of "
                                     f"shape (B, 1 + use_image_num, {TEXT_TOKENS}, {self.text_embed_dim}) (the "
                                     f"video's caption, then one per image), got {text_embedding.shape}")
                cond_blocks = cond + self.text_embedding_projection(text_embedding[:, 0].reshape(b, -1))
            else:
                cond_blocks = cond + self.text_embedding_projection(text_embedding.reshape(b, -1))
        d = cond.shape[-1]
        cond_spatial, cond_temporal, cond_final = cond_blocks, cond_blocks, cond  # per sample (B, D)
        if use_image_num:
            cond_image = self._image_conditions(t_emb, y_image, text_embedding, force_drop_ids_image,
                                                b, use_image_num)  # (B, I, D) or None
            if cond_image is not None:  # per frame: video frames t + y (or caption 0), image j its own
                cond_video = ops.broadcast_to(cond_blocks.expand_dims(1), (b, frames, d))  # (B, F, D)
                cond_spatial = ops.concat([cond_video, cond_image], axis=1).reshape(b * f, d)  # (B·(F+I), D)
                if self.condition == "class":
                    cond_final = cond_spatial

        # x stays frame-major, (B·(F+I), T, D): the temporal blocks attend across frames in this layout
        temp_embed = self.temp_embed.expand_dims(2)  # (1, F, 1, D)
        for i in range(0, len(self.blocks), 2):
            x = self.blocks[i](x, cond_spatial)  # (B·(F+I), T, D)
            if use_image_num:
                x = x.reshape(b, f, tokens, d)
                x_video, x_image = x[:, :frames], x[:, frames:]  # (B, F, T, D), (B, I, T, D)
                if i == 0:
                    x_video = x_video + temp_embed
                x_video = self.blocks[i + 1](x_video.reshape(b * frames, tokens, d), cond_temporal)
                x = ops.concat([x_video.reshape(b, frames, tokens, d), x_image], axis=1).reshape(b * f, tokens, d)
            else:
                if i == 0:
                    x = (x.reshape(b, f, tokens, d) + temp_embed).reshape(b * f, tokens, d)
                x = self.blocks[i + 1](x, cond_temporal)  # (B·F, T, D)

        x = self.final_layer(x, cond_final)  # (B·(F+I), T, p·p·C_out)
        x = self.unpatchify(x)  # (B·(F+I), C_out, H, W)
        return x.reshape(b, f, self.out_channels, h, w)

    def _image_conditions(self, t_emb, y_image, text_embedding, force_drop_ids_image, b, num_images):
        """The I images' spatial conditioning (B, I, D): t + the image's label or caption embedding;
        None without a condition (then every frame has c = t)."""
        if self.condition == "class":
            if y_image is None:
                raise ValueError(f"use_image_num={num_images} with condition='class' needs y_image, the images' "
                                 f"labels ({b}, {num_images})")
            if y_image.shape != (b, num_images):
                raise ValueError(f"y_image must have shape (B, use_image_num) = ({b}, {num_images}), "
                                 f"got {y_image.shape}")
            if force_drop_ids_image is None and self.training and self.y_embedder.dropout_prob > 0:
                # the reference: one draw per sample, shared by its images
                drop = ops.rand((b, 1)) < self.y_embedder.dropout_prob
                force_drop_ids_image = ops.broadcast_to(drop, (b, num_images)).astype(ms.int32)
            if force_drop_ids_image is not None and force_drop_ids_image.shape != (b, num_images):
                raise ValueError(f"force_drop_ids_image must have shape (B, use_image_num) = ({b}, {num_images}), "
                                 f"got {force_drop_ids_image.shape}")
            return t_emb.expand_dims(1) + self.y_embedder(y_image, force_drop_ids_image)  # (B, I, D)
        if self.condition == "text":
            captions = text_embedding[:, 1:].reshape(b * num_images, -1)  # (B·I, 77·text_embed_dim)
            captions = self.text_embedding_projection(captions).reshape(b, num_images, -1)  # (B, I, D)
            return t_emb.expand_dims(1) + captions
        return None

    def forward_with_cfg(self, x, t, y=None, cfg_scale=4.0, text_embedding=None):
        """Classifier-free guidance in one batch: the first half of x is run with the conditions in y
        and the second half with the null conditions the caller put there. Only the first in_channels
        (epsilon) channels are guided; the variance channels pass through, as in the reference."""
        half = x[: x.shape[0] // 2]
        out = self.construct(ops.concat([half, half], axis=0), t, y, text_embedding)
        eps, rest = out[:, :, : self.in_channels], out[:, :, self.in_channels:]
        cond_eps, uncond_eps = ops.split(eps, eps.shape[0] // 2, axis=0)
        guided = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return ops.concat([ops.concat([guided, guided], axis=0), rest], axis=2)


#################################################################################
#                   Sine/cosine positional embeddings                            #
#################################################################################

def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    """pos (M,) -> (M, embed_dim): [sin(pos·ω), cos(pos·ω)] with ω_i = 10000^(-2i/embed_dim)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.outer(np.asarray(pos, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim, grid_size):
    """(gh·gw, embed_dim) table, row-major over the patch grid; the first half of each vector encodes
    the column (w) and the second half the row (h), as the MAE/DiT tables do."""
    gh, gw = _pair(grid_size)
    cols, rows = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, cols)
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, rows)
    return np.concatenate([emb_w, emb_h], axis=1)


def get_1d_sincos_temp_embed(embed_dim, length):
    return get_1d_sincos_pos_embed_from_grid(embed_dim, np.arange(length))


#################################################################################
#                                   Latte configs                                #
#################################################################################

# depth counts the blocks of both kinds; every check of a depth (the model, `latte train`, `latte bench`) says this
DEPTH_RULE = "the blocks alternate spatial and temporal, so depth must be even"

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

LATTE_MODELS = {
    f"Latte-{size}/{patch}": dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}


def create_latte(name, **kwargs):
    """Build a named variant, e.g. create_latte("Latte-XL/2", input_size=32, num_frames=16); keyword
    arguments override the variant's own (depth, hidden_size, num_heads) too."""
    if name not in LATTE_MODELS:
        raise ValueError(f"unknown Latte variant {name!r}; choose one of {', '.join(LATTE_MODELS)}")
    return Latte(**{**LATTE_MODELS[name], **kwargs})


def latte_config_from_state_dict(state, in_channels=4):
    """Constructor arguments of the Latte that owns these weights, read off the tensor shapes.

    num_heads is not visible in the weights: the registry's value for that width is used (64-wide
    heads otherwise). With label dropout the class table has a null row, so num_classes = rows - 1.
    For a "linear" patch embedder the channel count cannot be told from the patch size: pass it.
    """
    def shape(name):
        if name not in state:
            raise ValueError(f"not a Latte checkpoint: no {name!r}")
        return tuple(state[name].shape)

    _, tokens, hidden = shape("pos_embed")
    num_frames = shape("temp_embed")[1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    proj = shape("x_embedder.proj.weight")
    if len(proj) == 4:
        patch_embedder, in_channels, patch_size = "conv", proj[1], proj[2]
    else:
        patch_embedder = "linear"
        patch_size = int(round(math.sqrt(proj[1] / in_channels)))
    out_features = shape("final_layer.linear.weight")[0]
    grid = int(round(math.sqrt(tokens)))
    config = dict(
        input_size=grid * patch_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden,
        depth=depth, mlp_ratio=shape("blocks.0.mlp.fc1.weight")[0] / hidden, num_frames=num_frames,
        learn_sigma=out_features == 2 * in_channels * patch_size ** 2, patch_embedder=patch_embedder,
        num_heads=next((h for d, w, h in _SIZES.values() if w == hidden), max(1, hidden // 64)),
    )
    if "y_embedder.embedding_table.weight" in state:
        config.update(condition="class", num_classes=shape("y_embedder.embedding_table.weight")[0] - 1,
                      class_dropout_prob=0.1)
    elif "text_embedding_projection.1.weight" in state:
        features = shape("text_embedding_projection.1.weight")[1]  # 77 tokens x the encoder's width
        if features % TEXT_TOKENS:
            raise ValueError(f"text_embedding_projection.1.weight takes {features} features, not {TEXT_TOKENS} "
                             f"tokens of one width")
        config.update(condition="text", text_embed_dim=features // TEXT_TOKENS)
    return config
