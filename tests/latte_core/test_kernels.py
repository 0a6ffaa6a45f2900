"""latte_core.kernels: every CPU kernel equals MindSpore's own ops, forward and gradients, on random
inputs of odd sizes; the library is built from the package's source, and a machine that cannot build
it falls back to MindSpore's ops with one warning."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from latte_core import kernels
from latte_core.errors import UserError
from latte_core.attention import Attention
from latte_core.layers import Dense, GatedResidual, GELUTanh, ModulatedLayerNorm
from latte_core.vae import Conv2d, GroupNorm

from conftest import relative_error


class _Weighted(nn.Cell):
    """Σ cell(*inputs)·cotangent: its gradients are the cell's vector-Jacobian products."""

    def __init__(self, cell, cotangent):
        super().__init__(auto_prefix=False)
        self.cell = cell
        self.cotangent = Tensor(cotangent)

    def construct(self, *inputs):
        return (self.cell(*inputs) * self.cotangent).sum()


def _run(cell, inputs, cotangent):
    """(output, input gradients, parameter gradients) as numpy arrays."""
    inputs = [Tensor(x) for x in inputs]
    params = cell.trainable_params()
    grads = ms.grad(_Weighted(cell, cotangent), grad_position=tuple(range(len(inputs))), weights=params or None)(*inputs)
    input_grads, param_grads = (grads if params else (grads, ()))
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    return (cell(*inputs).asnumpy(), [g.asnumpy() for g in input_grads], [g.asnumpy() for g in param_grads])


def _both_paths(build):
    """The same cell built on the kernels and on MindSpore's ops, with the same parameter values."""
    previous = kernels.set_enabled(True)
    try:
        fast = build()
        kernels.set_enabled(False)
        plain = build()
    finally:
        kernels.set_enabled(previous)
    assert fast.kernel is not None and plain.kernel is None
    for mine, theirs in zip(fast.get_parameters(), plain.get_parameters()):
        theirs.set_data(mine.data.copy())
    return fast, plain


def _assert_same(build, inputs, out_shape, seed=0):
    fast, plain = _both_paths(build)
    cotangent = np.random.default_rng(seed + 1).standard_normal(out_shape).astype(np.float32)
    out_fast, inputs_fast, params_fast = _run(fast, inputs, cotangent)
    out_plain, inputs_plain, params_plain = _run(plain, inputs, cotangent)
    assert out_fast.shape == out_plain.shape == tuple(out_shape)
    assert relative_error(out_fast, out_plain) < 1e-5
    for ours, theirs in zip(inputs_fast + params_fast, inputs_plain + params_plain):
        assert ours.shape == theirs.shape
        assert relative_error(ours, theirs) < 1e-4
    assert len(params_fast) == len(params_plain)


def _random(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_the_kernels_build_on_this_machine_with_a_blas():
    assert kernels.enabled() and kernels.has_blas()
    assert os.path.isfile(kernels.library())
    assert kernels.gemm_in_use() == "onednn"  # MindSpore's x86 wheels ship libdnnl


@pytest.mark.parametrize("shape, out_features", [((3, 5, 37), 53), ((7, 16), 1), ((2, 1, 9, 130), 24)])
def test_dense(shape, out_features):
    def build():
        cell = Dense(shape[-1], out_features)
        cell.bias.set_data(Tensor(_random(out_features, seed=2)))
        return cell
    _assert_same(build, [_random(*shape)], shape[:-1] + (out_features,))


# (x's shape, rows of the modulation): one per row of x, or one per sample for its frames or token
# positions (the last shapes are large enough to run on both cores)
MODULATION_SHAPES = [((3, 7, 37), 3), ((1, 1, 5), 1), ((4, 13, 384), 4), ((6, 7, 37), 2), ((6, 7, 37), 1),
                     ((128, 16, 96), 2), ((96, 24, 64), 96)]


@pytest.mark.parametrize("shape, groups", MODULATION_SHAPES)
def test_layer_norm_with_adaln_modulation(shape, groups):
    _, _, d = shape
    inputs = [_random(*shape) * 3 + 1, _random(groups, d, seed=1), _random(groups, d, seed=2)]
    _assert_same(lambda: ModulatedLayerNorm(d), inputs, shape)


@pytest.mark.parametrize("shape, groups", MODULATION_SHAPES + [((2, 64, 48), 2)])
def test_gated_residual(shape, groups):
    _, _, d = shape
    _assert_same(GatedResidual, [_random(*shape), _random(groups, d, seed=1), _random(*shape, seed=2)], shape)


@pytest.mark.parametrize("shape", [(5, 37), (2, 3, 1031)])
def test_gelu_tanh(shape):
    _assert_same(GELUTanh, [_random(*shape) * 4], shape)


@pytest.mark.parametrize("batch, tokens, dim, heads", [(3, 37, 48, 4), (2, 5, 32, 2), (4, 64, 96, 6), (1, 2, 16, 1)])
def test_attention_from_the_qkv_projection(batch, tokens, dim, heads):
    _assert_same(lambda: Attention(dim, heads), [_random(batch, tokens, dim)], (batch, tokens, dim))


class _AcrossFrames(nn.Cell):
    """Attention over each sample's frames of x (B·F, T, D), B fixed (the temporal blocks')."""

    def __init__(self, dim, heads, samples):
        super().__init__(auto_prefix=False)
        self.attention = Attention(dim, heads, over_frames=True)
        self.kernel, self.samples = self.attention.kernel, samples

    def construct(self, x):
        return self.attention(x, self.samples)


# the kernel reads the frame-major layout in place; MindSpore's path transposes to (B·T, F, D) and back
@pytest.mark.parametrize("samples, frames, tokens, dim, heads", [(2, 8, 5, 48, 4), (1, 3, 7, 32, 2),
                                                                 (3, 4, 64, 96, 6), (2, 1, 3, 16, 1)])
def test_attention_across_frames_in_the_spatial_layout(samples, frames, tokens, dim, heads):
    shape = (samples * frames, tokens, dim)
    _assert_same(lambda: _AcrossFrames(dim, heads, samples), [_random(*shape)], shape)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 7), 3), ((1, 32, 9, 9), 8), ((3, 8, 1, 3), 4)])
def test_group_norm(shape, groups, silu):
    def build():
        cell = GroupNorm(groups, shape[1], silu=silu)
        cell.weight.set_data(Tensor(_random(shape[1], seed=3)))
        cell.bias.set_data(Tensor(_random(shape[1], seed=4)))
        return cell
    _assert_same(build, [_random(*shape) * 2 - 1], shape)


# the VAE's convolutions (3x3 stride 1 pad 1 with many and with 3 input channels, the downsampler's stride 2
# with bottom/right padding, 1x1 with many and with few channels), others by im2col (1x1 padded, 5x5) and odd
# sizes: rows that end mid-block, more than one block of rows
@pytest.mark.parametrize("shape, out_channels, kernel_size, stride, padding", [
    ((2, 20, 9, 13), 7, 3, 1, 1), ((1, 3, 31, 17), 16, 3, 1, 1), ((3, 17, 12, 10), 5, 3, 2, (0, 1, 0, 1)),
    ((2, 24, 5, 6), 11, 1, 1, 0), ((1, 32, 70, 45), 8, 3, 1, 1), ((2, 4, 50, 41), 4, 1, 1, 0),
    ((1, 20, 7, 9), 6, 1, 1, 1), ((2, 6, 11, 8), 5, 5, 1, 2)])
def test_conv2d_inference(shape, out_channels, kernel_size, stride, padding):
    def build():
        cell = Conv2d(shape[1], out_channels, kernel_size, stride=stride, padding=padding)
        cell.bias.set_data(Tensor(_random(out_channels, seed=5)))
        return cell
    fast, plain = _both_paths(build)
    fast.set_train(False)
    x = Tensor(_random(*shape) * 2 - 1)
    ours, theirs = fast(x).asnumpy(), plain(x).asnumpy()
    assert ours.shape == theirs.shape
    assert relative_error(ours, theirs) < 1e-5  # sums in another order, Winograd's transforms: measured <= 8e-7
    fast.set_train(True)  # training (train-vae) runs MindSpore's convolution, which has gradients
    out_fast, inputs_fast, params_fast = _run(fast, [x.asnumpy()], np.ones(theirs.shape, np.float32))
    out_plain, inputs_plain, params_plain = _run(plain, [x.asnumpy()], np.ones(theirs.shape, np.float32))
    for a, b in zip([out_fast] + inputs_fast + params_fast, [out_plain] + inputs_plain + params_plain):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shapes", [[(1,)], [(37, 53)], [(3, 4097), (5,), (2, 3, 4)]])
def test_squared_sum_of_one_or_many_tensors(shapes):
    xs = [_random(*shape, seed=i) for i, shape in enumerate(shapes)]
    total = kernels.squared_sum_op()(*[Tensor(x) for x in xs]).asnumpy()
    expected = sum(float((x.astype(np.float64) ** 2).sum()) for x in xs)
    assert total.shape == (1,)
    assert abs(float(total[0]) - expected) < 1e-5 * expected


def test_kernels_count_their_calls_and_the_dense_matmul_shapes():
    kernels.reset_stats()
    cell = _both_paths(lambda: Dense(37, 53))[0]
    cell(Tensor(_random(3, 5, 37)))
    stats = kernels.stats()["dense_forward"]
    assert stats["calls"] == 1 and stats["flops"] == 2 * 15 * 37 * 53 and stats["seconds"] > 0
    assert kernels.gemm_shapes() == [{"m": 15, "n": 53, "k": 37, "trans_a": False, "trans_b": True, "calls": 1}]


def test_without_a_compiler_the_models_fall_back_with_one_warning(tmp_path):
    """No g++ on PATH and an empty kernel cache: one warning, MindSpore's ops, the same outputs."""
    script = (
        "import logging, numpy as np, mindspore as ms\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "ms.set_device('CPU')\n"
        "from latte_core import create_latte, kernels\n"
        "model = create_latte('Latte-S/2', input_size=8, num_frames=2, depth=2, hidden_size=64, num_heads=2)\n"
        "assert not kernels.enabled() and model.blocks[0].attn.kernel is None\n"
        "x = ms.Tensor(np.ones((1, 2, 4, 8, 8), np.float32))\n"
        "print('finite', bool(np.isfinite(model(x, ms.Tensor(np.array([3], np.int32))).asnumpy()).all()))\n")
    env = {**os.environ, "PATH": str(tmp_path), "LATTE_KERNEL_CACHE": str(tmp_path / "cache"), "GLOG_v": "3"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "finite True" in proc.stdout
    assert proc.stderr.count("CPU kernels unavailable, using MindSpore's ops instead") == 1
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.so"))


_PRODUCTS_SCRIPT = """
import numpy as np, mindspore as ms
ms.set_device("CPU")
from latte_core import kernels
from latte_core.attention import Attention
from latte_core.layers import Dense
from latte_core.vae import Conv2d
results = {{}}
for name, build, shape in [("dense", lambda: Dense(130, 24), (2, 9, 130)), ("attention", lambda: Attention(96, 6), (2, 64, 96))]:
    ms.set_seed(0)
    cell = build()
    x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    results[name] = cell(x).asnumpy()
    loss = lambda x: (cell(x) ** 2).sum()
    grads = ms.grad(loss, grad_position=0, weights=cell.trainable_params())(x)
    results.update({{f"{{name}}_grad_{{i}}": g.asnumpy() for i, g in enumerate([grads[0], *grads[1]])}})
ms.set_seed(0)
conv = Conv2d(20, 7, 3, stride=1, padding=1)
conv.set_train(False)
results["conv"] = conv(ms.Tensor(np.random.default_rng(1).standard_normal((2, 20, 9, 13)).astype(np.float32))).asnumpy()
np.savez({out!r}, gemm=np.array(kernels.gemm_in_use()), **results)
"""


def test_the_products_run_onednn_by_default_and_openblas_on_request_alike(tmp_path):
    """The dense, attention and convolution kernels call oneDNN's sgemm (MindSpore's libdnnl, a private
    copy) unless LATTE_GEMM=openblas: both give the MindSpore ops' results, so they agree with each other
    within float32 rounding of sums in another order (measured <= 4e-7 relative, the short sums of the
    attention and the convolution bit-equal; bound 1e-5 as above)."""
    arrays = {}
    for backend in ("onednn", "openblas"):
        out = tmp_path / f"{backend}.npz"
        result = subprocess.run([sys.executable, "-c", _PRODUCTS_SCRIPT.format(out=str(out))], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "LATTE_GEMM": backend})
        assert result.returncode == 0, result.stderr[-3000:]
        arrays[backend] = dict(np.load(out))
        assert str(arrays[backend].pop("gemm")) == backend
    assert sorted(arrays["onednn"]) == sorted(arrays["openblas"]) and len(arrays["onednn"]) > 6
    for name, ours in arrays["onednn"].items():
        assert relative_error(ours, arrays["openblas"][name]) < 1e-5, name


def test_an_unknown_gemm_backend_is_a_user_error(monkeypatch):
    monkeypatch.setenv("LATTE_GEMM", "mkl")
    with pytest.raises(UserError, match="LATTE_GEMM must be one of onednn, openblas, not 'mkl'"):
        kernels.gemm_backend()


_TEAM_SCRIPT = """
import ctypes, os, threading, numpy as np
from latte_core import kernels
lib = ctypes.CDLL(kernels.library())

def dense(x, w, b):
    y = np.empty((x.shape[0], w.shape[0]), np.float32)
    arrays = [x, w, b, y]
    shapes = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    status = lib.latte_dense_forward(4, (ctypes.c_void_p * 4)(*[a.ctypes.data for a in arrays]),
                                     (ctypes.c_int * 4)(*[a.ndim for a in arrays]),
                                     (ctypes.POINTER(ctypes.c_int64) * 4)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shapes]),
                                     (ctypes.c_char_p * 4)(*[b"float32"] * 4), None, None)
    assert status == 0
    return y

rng = np.random.default_rng(0)
x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in [(1024, 384), (1152, 384), (1152,)])
expected = dense(x, w, b)
results = [None] * 4  # four callers at once: one gets the team, the others start their own threads
def call(i):
    results[i] = dense(x, w, b)
threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert all(np.array_equal(r, expected) for r in results), "concurrent callers differ"
pid = os.fork()  # a child has no team threads: it must start its own, and compute the same
if pid == 0:
    os._exit(0 if np.array_equal(dense(x, w, b), expected) else 3)
assert os.waitpid(pid, 0)[1] == 0, "the forked child failed"
print("ok")
"""


def test_the_kernels_thread_team_serves_concurrent_callers_and_forked_children():
    """parallel_for hands its chunks to a team of threads that stays for the process; a concurrent caller
    starts its own threads, and a forked child (whose copy of the team has no threads) starts a new team.
    Every caller gets the bits of a lone call (the chunks do not depend on the thread running them)."""
    result = subprocess.run([sys.executable, "-c", _TEAM_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
