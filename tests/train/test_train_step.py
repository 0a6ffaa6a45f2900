import numpy as np
import mindspore as ms
from mindspore import Tensor

from latte_core import Latte, create_diffusion
from latte_toolkit.train.step import ClassDiffusionLoss, DiffusionLoss, TrainStep, Updater


def _tiny_latte(**kwargs):
    return Latte(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_frames=4, **kwargs)


def test_tiny_latte_overfits_one_clip():
    """One clip noised at four fixed timesteps: the compiled step drives the loss down > 10×,
    and the frozen sin-cos tables are not touched."""
    ms.set_seed(0)
    model = _tiny_latte()
    pos_before = model.pos_embed.asnumpy().copy()
    step = TrainStep(DiffusionLoss(model, create_diffusion("")), Updater(model.trainable_params(), learning_rate=3e-3))
    rng = np.random.default_rng(0)
    clip = np.tanh(rng.standard_normal((1, 4, 4, 8, 8))).astype(np.float32)
    x = Tensor(np.repeat(clip, 4, axis=0))
    t = Tensor(np.array([50, 300, 600, 900], np.int32))
    noise = Tensor(rng.standard_normal((4, 4, 4, 8, 8)).astype(np.float32))
    losses = [float(step(x, t, noise)[0].asnumpy()) for _ in range(120)]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
    np.testing.assert_array_equal(model.pos_embed.asnumpy(), pos_before)


def test_class_conditional_step_runs_and_updates_the_label_table():
    ms.set_seed(0)
    model = _tiny_latte(condition="class", num_classes=3)
    table_before = model.y_embedder.embedding_table.weight.asnumpy().copy()
    step = TrainStep(ClassDiffusionLoss(model, create_diffusion("")), Updater(model.trainable_params(), learning_rate=1e-3))
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32))
    args = (x, Tensor(np.array([3, 800], np.int32)), Tensor(rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)),
            Tensor(np.array([0, 2], np.int32)), Tensor(np.array([0, 0], np.int32)))
    for _ in range(3):
        loss, _, finite = step(*args)
    assert bool(finite.asnumpy())
    assert np.isfinite(loss.asnumpy())
    # the adaLN layers start at zero, so the table gets gradient once they have moved
    assert np.abs(model.y_embedder.embedding_table.weight.asnumpy() - table_before).max() > 0


def _weights(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


def test_accumulated_micro_batches_equal_one_large_batch_step():
    rng = np.random.default_rng(2)
    x, noise = (rng.standard_normal((4, 4, 4, 8, 8)).astype(np.float32) for _ in range(2))
    t = np.array([10, 200, 500, 900], np.int32)
    ms.set_seed(1)
    whole_model = _tiny_latte()
    ms.set_seed(1)
    micro_model = _tiny_latte()
    options = dict(learning_rate=1e-3, weight_decay=0.01, max_grad_norm=0.5)
    whole = TrainStep(DiffusionLoss(whole_model, create_diffusion("")), Updater(whole_model.trainable_params(), **options))
    micro = TrainStep(DiffusionLoss(micro_model, create_diffusion("")),
                      Updater(micro_model.trainable_params(), **options), accumulation_steps=2)
    for _ in range(3):
        _, whole_norm, _ = whole(Tensor(x), Tensor(t), Tensor(noise))
        _, norm, finite = micro(Tensor(x[:2]), Tensor(t[:2]), Tensor(noise[:2]))
        assert norm is None and finite is None  # summed, not applied yet
        _, micro_norm, finite = micro(Tensor(x[2:]), Tensor(t[2:]), Tensor(noise[2:]))
        assert bool(finite.asnumpy())
        np.testing.assert_allclose(micro_norm.asnumpy(), whole_norm.asnumpy(), rtol=1e-5)
    expected, got = _weights(whole_model), _weights(micro_model)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_an_update_with_non_finite_gradients_changes_nothing():
    ms.set_seed(0)
    model = _tiny_latte()
    updater = Updater(model.trainable_params(), learning_rate=1e-2, ema=None,
                      loss_scaler=ms.amp.DynamicLossScaler(2.0 ** 16, 2, 1000))
    step = TrainStep(DiffusionLoss(model, create_diffusion("")), updater)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0, 0] = np.inf
    before = _weights(model)
    _, _, finite = step(Tensor(x), Tensor(np.array([1, 2], np.int32)), Tensor(np.zeros_like(x)))
    assert not bool(finite.asnumpy())
    assert float(updater.loss_scaler.scale_value.asnumpy()) == 2.0 ** 15  # lowered, step skipped
    after = _weights(model)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_the_returned_loss_is_unscaled_on_a_step_that_raises_the_loss_scale():
    """scale_window=1 doubles the scale after every finite update: the step must divide by the scale
    its gradients were computed with, not the raised one (which halved the logged loss)."""
    ms.set_seed(0)
    model = _tiny_latte()
    loss_net = DiffusionLoss(model, create_diffusion(""))
    rng = np.random.default_rng(4)
    x, noise = (Tensor(rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)) for _ in range(2))
    t = Tensor(np.array([5, 700], np.int32))
    expected = float(loss_net(x, t, noise).asnumpy())
    updater = Updater(model.trainable_params(), learning_rate=1e-3,
                      loss_scaler=ms.amp.DynamicLossScaler(2.0 ** 4, 2, 1))
    loss, _, finite = TrainStep(loss_net, updater)(x, t, noise)
    assert bool(finite.asnumpy()) and float(updater.loss_scaler.scale_value.asnumpy()) == 2.0 ** 5
    # scaling by a power of two is exact; the bound covers the forward pass compiled inside the
    # gradient graph rounding apart from the plain one (the bug was a factor of 2)
    np.testing.assert_allclose(float(loss.asnumpy()), expected, rtol=1e-6)


def test_ema_warmup_follows_the_weights_with_the_growing_decay():
    """ema_warmup: after update n (1-based) the EMA is e_n = d_n * e_{n-1} + (1 - d_n) * w_n with
    d_n = min(decay, n / (9 + n)), replayed here in float64 from the weights after each step; without
    warmup d_n = decay. Bound 1e-6: float32 EMA arithmetic over 4 updates of weights of size ~0.1."""
    from latte_toolkit.train.step import EMA
    for warmup in (True, False):
        ms.set_seed(0)
        model = _tiny_latte()
        params = model.trainable_params()
        ema = EMA(params, 0.999, warmup=warmup)
        step = TrainStep(DiffusionLoss(model, create_diffusion("")),
                         Updater(params, learning_rate=1e-2, ema=ema))
        expected = {p.name: p.asnumpy().astype(np.float64) for p in params}
        rng = np.random.default_rng(5)
        for n in range(1, 5):
            x, noise = (Tensor(rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)) for _ in range(2))
            step(x, Tensor(np.array([3, 600], np.int32)), noise)
            decay = min(0.999, n / (9 + n)) if warmup else 0.999
            for p in params:
                expected[p.name] = decay * expected[p.name] + (1 - decay) * p.asnumpy()
        for p, shadow in zip(params, ema.shadow):
            np.testing.assert_allclose(shadow.asnumpy(), expected[p.name], atol=1e-6, err_msg=p.name)
        moved = max(np.abs(shadow.asnumpy() - p.asnumpy()).max() for p, shadow in zip(params, ema.shadow))
        assert (moved < 0.02) if warmup else (moved > 0.02), moved  # warmup tracks; 0.999 stays at the start


def test_a_conditional_run_from_unconditional_weights_starts_its_condition_path_at_zero():
    """with_fresh_condition: weights without any y_embedder / text projection get that path at zero (the
    conditional model then computes what the unconditional one did); weights with one keep theirs."""
    from latte_toolkit.train.loop import with_fresh_condition
    unconditional = {p.name: p.asnumpy() for p in _tiny_latte().get_parameters()}
    for condition, extra in (("class", {"num_classes": 3}), ("text", {"text_embed_dim": 8})):
        model = _tiny_latte(condition=condition, **extra)
        config = {"condition": condition, "pretrained_model_path": "unconditional.ckpt"}
        state = with_fresh_condition(dict(unconditional), model, config)
        added = sorted(set(state) - set(unconditional))
        assert added and all(name.startswith({"class": "y_embedder.", "text": "text_embedding_projection."}[condition])
                             for name in added), added
        assert all(not state[name].any() for name in added)
        assert {p.name for p in model.get_parameters()} == set(state)
        own = dict(state, **{added[0]: np.ones_like(state[added[0]])})
        assert with_fresh_condition(own, model, config) is own  # a condition path of its own is kept
    assert with_fresh_condition(unconditional, _tiny_latte(), {"condition": None}) is unconditional


class _SumOfWeights(ms.nn.Cell):
    """A loss whose gradient is 1 for every weight: Adam's first steps then move each weight by exactly the
    learning rate (m̂ / √v̂ = 1), so a step's change measures the rate the optimizer used."""

    def __init__(self):
        super().__init__()
        self.weight = ms.Parameter(Tensor(np.zeros((3, 5), np.float32)), name="weight")

    def construct(self, x):
        return (self.weight * x).sum()


def test_the_learning_rate_set_before_each_step_is_the_one_the_compiled_step_uses():
    """A schedule sets the rate before every step (warm-up, cosine decay); the compiled graph must read the new
    value each time, not the one it was first compiled with (before the fix, 0.1 moved the weights by 1e-5).
    Bound: 1e-5 relative (Adam's bias corrections 1 - beta^t in float32; measured 3.6e-6)."""
    for accumulation in (1, 2):
        loss = _SumOfWeights()
        updater = Updater(loss.trainable_params(), learning_rate=1e-3)
        step = TrainStep(loss, updater, accumulation_steps=accumulation)
        for rate in (1e-5, 0.1, 2e-3):
            updater.set_learning_rate(rate)
            before = loss.weight.asnumpy().copy()
            for _ in range(accumulation):
                step(Tensor(np.ones((3, 5), np.float32)))
            change = before - loss.weight.asnumpy()
            np.testing.assert_allclose(change, rate, rtol=1e-5, err_msg=f"accumulation {accumulation}, rate {rate}")


class _SumOfTwoWeights(ms.nn.Cell):
    """_SumOfWeights with a second weight named as a class path's table, both starting at one."""

    def __init__(self):
        super().__init__()
        self.weight = ms.Parameter(Tensor(np.ones((3, 5), np.float32)), name="weight")
        self.table = ms.Parameter(Tensor(np.ones((4, 2), np.float32)), name="y_embedder.embedding_table.weight")

    def construct(self, x):
        return (self.weight * x).sum() + self.table.sum()


def test_condition_lr_scale_multiplies_the_rate_and_the_weight_decay_of_the_condition_path_only():
    """condition_lr_scale: the scaled parameters move by scale x the rate the schedule sets (Adam's first steps
    with gradient 1 move a weight by exactly its rate), decoupled weight decay at that rate too
    (p <- p (1 - rate wd) - rate); the others by the rate itself. Bound: 1e-5 relative, as above, plus two
    roundings of a weight near 1 in float32 (2 x 1.2e-7 absolute)."""
    loss = _SumOfTwoWeights()
    updater = Updater(loss.trainable_params(), learning_rate=1e-3, weight_decay=0.5,
                      scaled=["y_embedder.embedding_table.weight"], rate_scale=10.0)
    step = TrainStep(loss, updater)
    for rate in (1e-5, 0.02, 2e-3):
        updater.set_learning_rate(rate)
        before = {p.name: p.asnumpy().copy() for p in loss.trainable_params()}
        step(Tensor(np.ones((3, 5), np.float32)))
        for p in loss.trainable_params():
            own = rate * (10.0 if p.name.startswith("y_embedder") else 1.0)
            expected = before[p.name] * own * 0.5 + own
            np.testing.assert_allclose(before[p.name] - p.asnumpy(), expected, rtol=1e-5, atol=2.4e-7,
                                       err_msg=f"{p.name} {rate}")
