"""Small building blocks shared by the Latte transformer and the VAE.

Each block has two paths chosen when it is built: the CPU kernels of `kernels.py` (float32 on CPU,
when available) and MindSpore's ops everywhere else (Ascend, float16 under AMP, kernels switched
off). The MindSpore path uses formulations that are fast on its CPU kernels too: the tanh-GELU is
composed from elementwise ops (MindSpore's fused CPU GELU is ~6x slower), and the affine-free
LayerNorm uses the LayerNorm primitive with constant scale/shift so that official checkpoints, which
have no parameters for these norms, load one-to-one.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from . import kernels

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """GELU with the tanh approximation (PyTorch's approximate="tanh"), from elementwise ops:
    0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³), in fewer CPU kernels."""
    return x * ops.sigmoid(x * (2 * _SQRT_2_OVER_PI + (2 * _SQRT_2_OVER_PI * 0.044715) * (x * x)))


def per_row(modulation, rows):
    """(G, K) modulation -> (rows, 1, K), each of its rows repeated for rows // G consecutive rows of x
    (x is sample-major: B·F frames, or B·T token positions, for a modulation per sample)."""
    g, k = modulation.shape
    return ops.broadcast_to(modulation.expand_dims(1), (g, rows // g, k)).reshape(rows, 1, k)


def modulate(x, shift, scale):
    """adaLN modulation: x (N, T, D), shift/scale (G, D) with G dividing N (see per_row)."""
    return x * (1 + per_row(scale, x.shape[0])) + per_row(shift, x.shape[0])


class Dense(nn.Dense):
    """nn.Dense (same parameters, `weight` (out, in) and `bias`) whose float32 CPU path is one fused
    kernel over BLAS, forward and backward. `init` (e.g. "zeros") replaces nn.Dense's random
    initialisers for weight and bias."""

    def __init__(self, in_channels, out_channels, has_bias=True, init=None):
        defaults = {} if init is None else {"weight_init": init, "bias_init": init}
        super().__init__(in_channels, out_channels, has_bias=has_bias, **defaults)
        self.kernel = kernels.dense_op() if has_bias and kernels.enabled() and kernels.has_blas() else None

    def construct(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x, self.weight, self.bias)
        return super().construct(x)


class LayerNormNoAffine(nn.Cell):
    """LayerNorm over the last axis with no learnable parameters (elementwise_affine=False)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.gamma = Tensor(np.ones(hidden_size, np.float32))
        self.beta = Tensor(np.zeros(hidden_size, np.float32))

    def construct(self, x):
        y, _, _ = self.norm(x, self.gamma.astype(x.dtype), self.beta.astype(x.dtype))
        return y


class ModulatedLayerNorm(LayerNormNoAffine):
    """adaLN's input: modulate(LayerNorm(x), shift, scale), fused into one kernel on CPU.
    x (N, T, D), shift/scale (G, D), G dividing N: row i of x takes modulation row i // (N / G)
    -> (N, T, D)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__(hidden_size, eps)
        self.kernel = kernels.norm_modulate_op() if kernels.enabled() else None
        self.eps = kernels.scalar_input(eps)

    def construct(self, x, shift, scale):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x, shift, scale, self.eps)[0]
        return modulate(super().construct(x), shift, scale)


class GatedResidual(nn.Cell):
    """adaLN-Zero's residual: x + gate·h with x, h (N, T, D) and gate (G, D), G dividing N (as
    ModulatedLayerNorm's shift and scale)."""

    def __init__(self):
        super().__init__()
        self.kernel = kernels.gated_residual_op() if kernels.enabled() else None

    def construct(self, x, gate, h):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x, gate, h)
        return x + per_row(gate, x.shape[0]) * h


class GELUTanh(nn.Cell):
    def __init__(self):
        super().__init__()
        self.kernel = kernels.gelu_tanh_op() if kernels.enabled() else None

    def construct(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x)
        return gelu_tanh(x)


class Mlp(nn.Cell):
    """Two-layer MLP with tanh-GELU; names (fc1, fc2) follow timm's Mlp used by the reference."""

    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = Dense(in_features, hidden_features)
        self.act = GELUTanh()
        self.fc2 = Dense(hidden_features, in_features)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EmbeddingTable(nn.Cell):
    """A lookup table whose parameter is called `weight`, as torch.nn.Embedding's is; N(0, std²) unless
    `init` (e.g. "zeros") says otherwise."""

    def __init__(self, num_embeddings, embedding_dim, std=0.02, init=None):
        super().__init__()
        self.weight = Parameter(initializer(init or Normal(std), (num_embeddings, embedding_dim), ms.float32),
                                name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)
