import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from latte_core import Latte
from latte_core.attention import BlockwiseAttention, PlainAttention

from conftest import relative_error


class _Objective(nn.Cell):
    """A scalar of the attention output whose gradient reaches q, k and v."""

    def __init__(self, core, returns_lse):
        super().__init__()
        self.core = core
        self.returns_lse = returns_lse

    def construct(self, q, k, v, weight):
        out = self.core(q, k, v)
        if self.returns_lse:
            out = out[0]
        return (out * weight).sum()


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
@pytest.mark.parametrize("length, block", [(64, 16), (37, 8), (5, 16), (100, 33)])
def test_blockwise_attention_equals_plain_forward_and_gradients(mode, length, block):
    ms.set_context(mode=mode)
    rng = np.random.default_rng(length)
    q, k, v = (Tensor(rng.standard_normal((2, 3, length, 16)).astype(np.float32) * 2) for _ in range(3))
    weight = Tensor(rng.standard_normal((2, 3, length, 16)).astype(np.float32))
    plain, blockwise = PlainAttention(0.25), BlockwiseAttention(0.25, block_size=block)
    assert relative_error(blockwise(q, k, v)[0].asnumpy(), plain(q, k, v).asnumpy()) < 1e-5
    grads_plain = ms.grad(_Objective(plain, False), grad_position=(0, 1, 2))(q, k, v, weight)
    grads_block = ms.grad(_Objective(blockwise, True), grad_position=(0, 1, 2))(q, k, v, weight)
    for ours, ref in zip(grads_block, grads_plain):
        assert relative_error(ours.asnumpy(), ref.asnumpy()) < 1e-5


@pytest.mark.parametrize("length, block", [(64, 16), (37, 8)])
def test_blockwise_attention_in_float16_matches_float32_attention(length, block):
    """AMP O2 (dtype fp16) runs the attention on float16 q, k, v: the padding mask must not promote the
    scores to float32 (MatMul of float32 probabilities with float16 v was refused). Bound 1e-2 of the
    scale: float16 keeps 11 bits (4.9e-4 per value), summed over 16-64 keys and two matmuls."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(length)
    q, k, v = (rng.standard_normal((2, 3, length, 16)).astype(np.float32) for _ in range(3))
    weight = rng.standard_normal((2, 3, length, 16)).astype(np.float32)
    half = [Tensor(a.astype(np.float16)) for a in (q, k, v, weight)]
    full = [Tensor(a.astype(np.float16).astype(np.float32)) for a in (q, k, v, weight)]  # the same values
    blockwise, plain = BlockwiseAttention(0.25, block_size=block), PlainAttention(0.25)
    out = blockwise(*half[:3])[0]
    assert out.dtype == ms.float16
    assert relative_error(out.asnumpy().astype(np.float32), plain(*full[:3]).asnumpy()) < 1e-2
    grads_half = ms.grad(_Objective(blockwise, True), grad_position=(0, 1, 2))(*half)
    grads_full = ms.grad(_Objective(plain, False), grad_position=(0, 1, 2))(*full)
    for ours, ref in zip(grads_half, grads_full):
        assert ours.dtype == ms.float16
        assert relative_error(ours.asnumpy().astype(np.float32), ref.asnumpy()) < 1e-2


def test_latte_with_flash_attention_matches_plain(latte_fixture):
    io = latte_fixture["io"]
    from latte_core.checkpoint import load_weights
    outs = []
    for flash in (False, True):
        model = Latte(**latte_fixture["config"], enable_flash_attention=flash)
        load_weights(model, latte_fixture["pt"])
        model.set_train(False)
        outs.append(model(Tensor(io["x"]), Tensor(io["t"]), Tensor(io["y"])).asnumpy())
    assert relative_error(outs[1], outs[0]) < 1e-5
