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
