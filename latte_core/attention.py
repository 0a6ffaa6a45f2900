"""Multi-head self-attention with selectable backends.

- "plain": softmax(q·kᵀ·scale)·v, materialising the (N, N) score matrix.
- "flash": on Ascend, MindSpore's fused `ops.flash_attention_score` (float16 inside); on every other
  device a block-wise online-softmax attention (`BlockwiseAttention`) whose forward and backward keep
  only (N, block) scores at a time, so memory grows linearly with the sequence length.
"""
import logging

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from . import kernels
from .layers import Dense

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("plain", "flash")
_MASKED = -1e30  # additive mask for padded keys; finite so that exp(mask - max) stays 0, not NaN


def device_target():
    return ms.get_context("device_target")


class PlainAttention(nn.Cell):
    """Reference attention on (B, H, N, d) tensors."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def construct(self, q, k, v):
        scores = ops.matmul(q * self.scale, k.swapaxes(-1, -2))  # (B, H, N, N)
        return ops.matmul(ops.softmax(scores, axis=-1), v)  # (B, H, N, d)


class BlockwiseAttention(nn.Cell):
    """Online-softmax attention over key blocks, with a hand-written backward that recomputes the
    scores block by block (the FlashAttention recurrence) instead of storing them.

    The blocks are visited by a tensor-controlled `while` loop rather than an unrolled Python loop:
    in GRAPH_MODE an unrolled loop keeps every block's intermediates alive (measured: more memory
    than plain attention), while the loop body's buffers are reused. Keys are padded to whole
    blocks and the padding is masked out.

    construct returns (out, logsumexp); callers use out. Shapes: q, k, v (B, H, N, d).
    """

    def __init__(self, scale, block_size=512):
        super().__init__()
        self.scale = scale
        self.block_size = block_size

    def _key_blocks(self, k, v):
        """k, v -> (num_blocks, B, H, block, d) each, an additive mask (num_blocks, 1, 1, 1, block)."""
        b, h, n, d = k.shape
        size = self.block_size
        num_blocks = (n + size - 1) // size
        pad = num_blocks * size - n
        if pad:
            k = ops.pad(k, (0, 0, 0, pad))
            v = ops.pad(v, (0, 0, 0, pad))
        mask = np.zeros(num_blocks * size, np.float32)
        mask[n:] = _MASKED
        k_blocks = k.reshape(b, h, num_blocks, size, d).permute(2, 0, 1, 3, 4)
        v_blocks = v.reshape(b, h, num_blocks, size, d).permute(2, 0, 1, 3, 4)
        # in q/k/v's dtype: a float32 mask would promote float16 scores (AMP O2) and break the matmul with v;
        # in float16 -1e30 becomes -inf, still exactly 0 after exp (every query sees a real key in block 0)
        return k_blocks, v_blocks, Tensor(mask.reshape(num_blocks, 1, 1, 1, size)).astype(k.dtype), num_blocks

    def construct(self, q, k, v):
        q = q * self.scale
        k_blocks, v_blocks, mask, num_blocks = self._key_blocks(k, v)
        # The first block starts the running state (starting from constants instead lets the graph
        # compiler fold a division by the zero denominator, with a RuntimeWarning).
        scores = ops.matmul(q, k_blocks[0].swapaxes(-1, -2)) + mask[0]  # (B, H, N, block)
        running_max = scores.max(axis=-1, keepdims=True)  # (B, H, N, 1)
        probs = ops.exp(scores - running_max)
        denom = probs.sum(axis=-1, keepdims=True)
        acc = ops.matmul(probs, v_blocks[0])  # (B, H, N, d)
        i = Tensor(1, ms.int32)
        while i < num_blocks:
            scores = ops.matmul(q, ops.gather(k_blocks, i, 0).swapaxes(-1, -2)) + ops.gather(mask, i, 0)
            new_max = ops.maximum(running_max, scores.max(axis=-1, keepdims=True))
            correction = ops.exp(running_max - new_max)
            probs = ops.exp(scores - new_max)
            denom = denom * correction + probs.sum(axis=-1, keepdims=True)
            acc = acc * correction + ops.matmul(probs, ops.gather(v_blocks, i, 0))
            running_max = new_max
            i = i + 1
        return acc / denom, running_max + ops.log(denom)

    def bprop(self, q, k, v, out, dout):
        o, logsumexp = out
        do = dout[0]
        b, h, n, d = k.shape
        qs = q * self.scale
        k_blocks, v_blocks, mask, num_blocks = self._key_blocks(k, v)
        delta = (do * o).sum(axis=-1, keepdims=True)  # (B, H, N, 1)
        dq = ops.zeros_like(q)
        dk_blocks = ops.zeros_like(k_blocks)
        dv_blocks = ops.zeros_like(v_blocks)
        block_ids = ops.arange(num_blocks).reshape(num_blocks, 1, 1, 1, 1)
        i = Tensor(0, ms.int32)
        while i < num_blocks:
            kb = ops.gather(k_blocks, i, 0)
            probs = ops.exp(ops.matmul(qs, kb.swapaxes(-1, -2)) + ops.gather(mask, i, 0) - logsumexp)
            dprobs = ops.matmul(do, ops.gather(v_blocks, i, 0).swapaxes(-1, -2))
            dscores = probs * (dprobs - delta)  # (B, H, N, block)
            dq = dq + ops.matmul(dscores, kb) * self.scale
            this_block = (block_ids == i).astype(q.dtype)
            dk_blocks = dk_blocks + this_block * ops.matmul(dscores.swapaxes(-1, -2), qs).expand_dims(0)
            dv_blocks = dv_blocks + this_block * ops.matmul(probs.swapaxes(-1, -2), do).expand_dims(0)
            i = i + 1
        dk = dk_blocks.permute(1, 2, 0, 3, 4).reshape(b, h, -1, d)[:, :, :n]
        dv = dv_blocks.permute(1, 2, 0, 3, 4).reshape(b, h, -1, d)[:, :, :n]
        return dq, dk, dv


class AscendFlashAttention(nn.Cell):
    """MindSpore's fused flash attention (Ascend only); computes in float16."""

    def __init__(self, num_heads, scale):
        super().__init__()
        self.num_heads = num_heads
        self.scale = scale

    def construct(self, q, k, v):
        dtype = q.dtype
        out = ops.flash_attention_score(
            q.astype(ms.float16), k.astype(ms.float16), v.astype(ms.float16), self.num_heads,
            scalar_value=self.scale, input_layout="BNSD")
        return out.astype(dtype)


class Attention(nn.Cell):
    """Self-attention with a fused qkv projection; parameter names follow timm (qkv, proj).

    x (B, N, D) attends over its N tokens. With over_frames, x is (B·F, T, D) in the spatial blocks'
    layout and each sample attends over its F frames at every one of the T token positions (Latte's
    temporal blocks): construct takes the sample count B. The CPU kernel reads that layout in place;
    the other paths move x to (B·T, F, D) and back."""

    def __init__(self, dim, num_heads, qkv_bias=True, backend="plain", block_size=512, over_frames=False):
        super().__init__()
        self.over_frames = over_frames
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        scale = self.head_dim ** -0.5
        self.qkv = Dense(dim, dim * 3, has_bias=qkv_bias)
        self.proj = Dense(dim, dim)
        self.blockwise = backend == "flash" and device_target() != "Ascend"
        # plain attention on CPU: one fused kernel from the qkv projection (attention_op); its memory is
        # one N×N buffer per thread, so it serves the plain backend, not the block-wise "flash" one
        self.kernel = kernels.attention_op() if backend == "plain" and kernels.enabled() and kernels.has_blas() else None
        self.heads_marker = Tensor(np.zeros(num_heads, np.float32))
        if backend == "plain":
            self.core = PlainAttention(scale)
        elif self.blockwise:
            self.core = BlockwiseAttention(scale, block_size)
        else:
            # The fused kernel takes head sizes that are multiples of 16, up to 512.
            if self.head_dim % 16 or self.head_dim > 512:
                raise ValueError(f"flash attention on Ascend needs a head size that is a multiple of 16 "
                                 f"and at most 512, got {self.head_dim}")
            self.core = AscendFlashAttention(num_heads, scale)

    def construct(self, x, samples=1):
        if not self.over_frames:
            return self._over_tokens(x)
        rows, tokens, c = x.shape
        frames = rows // samples
        if self.kernel is not None and x.dtype == ms.float32:
            qkv = self.qkv(x).reshape(samples, frames, tokens, 3 * c)
            return self.proj(self.kernel(qkv, self.heads_marker)[0].reshape(rows, tokens, c))
        x = x.reshape(samples, frames, tokens, c).swapaxes(1, 2).reshape(samples * tokens, frames, c)
        out = self._over_tokens(x)  # (B·T, F, D)
        return out.reshape(samples, tokens, frames, c).swapaxes(1, 2).reshape(rows, tokens, c)

    def _over_tokens(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.proj(self.kernel(self.qkv(x), self.heads_marker)[0])
        b, n, c = x.shape
        # split, then transpose each: indexing a permuted (3, B, H, N, d) tensor ran MindSpore's CPU
        # StridedSlice at ~10 ms a call, 11% of a Latte-S/2 training step
        qkv = ops.split(self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim), 1, axis=2)
        q, k, v = (part.reshape(b, n, self.num_heads, self.head_dim).swapaxes(1, 2) for part in qkv)  # (B, H, N, d)
        if self.blockwise:
            out = self.core(q, k, v)[0]
        else:
            out = self.core(q, k, v)
        out = out.permute(0, 2, 1, 3).reshape(b, n, c)  # (B, N, D)
        return self.proj(out)


def describe_attention_backend(enable_flash_attention):
    """One line saying which kernel `enable_flash_attention` selects on this device."""
    if not enable_flash_attention:
        return "plain attention"
    if device_target() == "Ascend":
        return "flash attention: MindSpore fused flash_attention_score (Ascend, float16)"
    return f"flash attention: block-wise online-softmax fallback ({device_target()} has no fused kernel)"
