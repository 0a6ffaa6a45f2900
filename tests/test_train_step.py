import numpy as np
import mindspore as ms
from mindspore import Tensor

from latte_core import Latte, create_diffusion
from train.step import ClassDiffusionLoss, DiffusionLoss, TrainStep


def _tiny_latte(**kwargs):
    return Latte(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_frames=4, **kwargs)


def test_tiny_latte_overfits_one_clip():
    """One clip noised at four fixed timesteps: the compiled step drives the loss down > 10×,
    and the frozen sin-cos tables are not touched."""
    ms.set_seed(0)
    model = _tiny_latte()
    pos_before = model.pos_embed.asnumpy().copy()
    step = TrainStep(DiffusionLoss(model, create_diffusion("")), learning_rate=3e-3)
    rng = np.random.default_rng(0)
    clip = np.tanh(rng.standard_normal((1, 4, 4, 8, 8))).astype(np.float32)
    x = Tensor(np.repeat(clip, 4, axis=0))
    t = Tensor(np.array([50, 300, 600, 900], np.int32))
    noise = Tensor(rng.standard_normal((4, 4, 4, 8, 8)).astype(np.float32))
    losses = [float(step(x, t, noise).asnumpy()) for _ in range(120)]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
    np.testing.assert_array_equal(model.pos_embed.asnumpy(), pos_before)


def test_class_conditional_step_runs_and_updates_the_label_table():
    ms.set_seed(0)
    model = _tiny_latte(condition="class", num_classes=3)
    table_before = model.y_embedder.embedding_table.weight.asnumpy().copy()
    step = TrainStep(ClassDiffusionLoss(model, create_diffusion("")), learning_rate=1e-3)
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32))
    args = (x, Tensor(np.array([3, 800], np.int32)), Tensor(rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)),
            Tensor(np.array([0, 2], np.int32)))
    for _ in range(3):
        loss = step(*args)
    assert np.isfinite(loss.asnumpy())
    # the adaLN layers start at zero, so the table gets gradient once they have moved
    assert np.abs(model.y_embedder.embedding_table.weight.asnumpy() - table_before).max() > 0
