"""Image-video joint training ("Latte + IMG", the reference's models/latte_img.py): x (B, F + I, C, H, W)
whose last I = use_image_num frames are images."""
import json

import numpy as np
import pytest
from mindspore import Tensor

from latte_core import Latte
from latte_core.checkpoint import load_weights
from latte_core.convert import convert_latte

from conftest import relative_error

SMALL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_frames=3)
F, I = 3, 2  # video frames, images


@pytest.fixture(scope="session")
def img_fixture(fixtures_dir):
    folder = fixtures_dir / "latte_img"
    config = json.loads((folder / "latte_img_uncond_small_config.json").read_text())
    return {"config": config, "pt": folder / "latte_img_uncond_small.pt",
            "io": dict(np.load(folder / "latte_img_uncond_small_io.npz"))}


def _random_weights(model, seed=0):
    """Every weight from N(0, 0.05²), as the fixtures' (the reference initialisation zeroes the adaLN
    and output layers, which would hide the conditioning)."""
    rng = np.random.default_rng(seed)
    for p in model.get_parameters():
        if p.name not in ("pos_embed", "temp_embed"):
            p.set_data(Tensor((0.05 * rng.standard_normal(p.shape)).astype(np.float32)))
    return model


def _inputs(b=2, frames=F + I, seed=1):
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((b, frames, 4, 8, 8)).astype(np.float32))
    t = Tensor(np.array([3, 700][:b], np.int32))
    return x, t


def _frames_that_differ(a, b):
    """(sample, frame) pairs where two (B, F, C, H, W) outputs differ at all."""
    return {tuple(idx) for idx in np.argwhere(np.abs(a - b).reshape(a.shape[0], a.shape[1], -1).max(-1) > 0)}


def test_forward_matches_the_official_latte_img(img_fixture, tmp_path, kernel_path):
    """Official latte_img.py, random weights, use_image_num=2, eval mode; loaded through the converter."""
    config = {k: v for k, v in img_fixture["config"].items() if k != "use_image_num"}
    converted = tmp_path / "latte_img.ckpt"
    found = convert_latte(img_fixture["pt"], converted)
    assert found["num_frames"] == config["num_frames"] and found.get("condition") is None
    model = Latte(**config)
    load_weights(model, converted, recompute=("pos_embed", "temp_embed"))
    model.set_train(False)
    assert (model.blocks[0].attn.kernel is not None) == kernel_path
    io = img_fixture["io"]
    use_image_num = img_fixture["config"]["use_image_num"]
    out = model(Tensor(io["x"]), Tensor(io["t"]), use_image_num=use_image_num).asnumpy()
    assert out.shape == io["out_uncond"].shape == (2, 6, 8, 8, 8)
    error = relative_error(out, io["out_uncond"])
    print(f"latte_img parity ({'kernels-on' if kernel_path else 'kernels-off'}): {error:.3e}")
    assert error < 1e-4
    # the images never reach the video frames: those equal a plain video forward on the video alone
    video = model(Tensor(io["x"][:, :4]), Tensor(io["t"])).asnumpy()
    assert relative_error(out[:, :4], video) < 1e-5


def test_use_image_num_zero_is_the_video_model_bit_for_bit(latte_fixture, kernel_path):
    io = latte_fixture["io"]
    model = Latte(**latte_fixture["config"])
    load_weights(model, latte_fixture["pt"], recompute=("pos_embed", "temp_embed"))
    model.set_train(False)
    x, t, y = Tensor(io["x"]), Tensor(io["t"]), Tensor(io["y"])
    np.testing.assert_array_equal(model(x, t, y, use_image_num=0).asnumpy(), model(x, t, y).asnumpy())
    # train mode, with the video labels' dropout decided by the caller (the fifth positional argument)
    model.set_train(True)
    drop = Tensor(np.array([1, 0], np.int32))
    np.testing.assert_array_equal(model(x, t, y, None, drop, use_image_num=0).asnumpy(),
                                  model(x, t, y, None, drop).asnumpy())


def _class_model():
    model = _random_weights(Latte(**SMALL, condition="class", num_classes=5, class_dropout_prob=0.1))
    model.set_train(True)
    return model


def test_class_conditional_training_gives_each_image_its_own_label():
    model = _class_model()
    x, t = _inputs()
    y = Tensor(np.array([1, 4], np.int32))
    keep_video = Tensor(np.zeros(2, np.int32))
    labels = np.array([[0, 2], [3, 1]], np.int32)
    keep = np.zeros((2, I), np.int32)

    def run(image_labels, drop_images):
        return model(x, t, y, None, keep_video, use_image_num=I, y_image=Tensor(image_labels),
                     force_drop_ids_image=Tensor(drop_images)).asnumpy()

    out = run(labels, keep)
    assert out.shape == (2, F + I, 8, 8, 8) and np.isfinite(out).all()
    # another label for image 0 of sample 1 changes that image's output, nothing else
    relabeled = labels.copy()
    relabeled[1, 0] = 2
    assert _frames_that_differ(out, run(relabeled, keep)) == {(1, F + 0)}
    # dropping that label (the null class) changes that frame alone too, exactly as the null label does
    dropped_mask = keep.copy()
    dropped_mask[1, 0] = 1
    dropped = run(labels, dropped_mask)
    assert _frames_that_differ(out, dropped) == {(1, F + 0)}
    null_label = labels.copy()
    null_label[1, 0] = 5
    np.testing.assert_array_equal(dropped, run(null_label, keep))
    # the video frames see neither the images nor their labels: a plain video forward on them
    video = model(Tensor(x.asnumpy()[:, :F]), t, y, None, keep_video).asnumpy()
    assert relative_error(out[:, :F], video) < 1e-5
    # without force-drop masks, training draws the dropout itself
    random = model(x, t, y, use_image_num=I, y_image=Tensor(labels)).asnumpy()
    assert random.shape == out.shape and np.isfinite(random).all()


def test_text_conditioning_takes_one_caption_per_image():
    model = _random_weights(Latte(**SMALL, condition="text"))
    model.set_train(False)
    x, t = _inputs()
    rng = np.random.default_rng(2)
    captions = rng.standard_normal((2, 1 + I, 77, 768)).astype(np.float32)  # the video's, then one per image
    out = model(x, t, text_embedding=Tensor(captions), use_image_num=I).asnumpy()
    assert out.shape == (2, F + I, 8, 8, 8) and np.isfinite(out).all()
    changed = captions.copy()
    changed[0, 2] = rng.standard_normal((77, 768))
    other = model(x, t, text_embedding=Tensor(changed), use_image_num=I).asnumpy()
    assert _frames_that_differ(out, other) == {(0, F + 1)}
    video = model(Tensor(x.asnumpy()[:, :F]), t, text_embedding=Tensor(captions[:, 0])).asnumpy()
    assert relative_error(out[:, :F], video) < 1e-5
    with pytest.raises(ValueError, match=r"use_image_num=2 .*text_embedding of shape \(B, 1 \+ use_image_num"):
        model(x, t, text_embedding=Tensor(captions[:, 0]), use_image_num=I)


@pytest.mark.parametrize("use_image_num, frames, message", [
    (-1, F, r"use_image_num must be a non-negative int, got -1"),
    (1, F + I, r"use_image_num=1: x has 5 frames, the model expects num_frames \+ use_image_num = 3 \+ 1"),
    (I, F, r"use_image_num=2: x has 3 frames"),
])
def test_a_bad_use_image_num_is_a_value_error_naming_it(use_image_num, frames, message):
    model = _random_weights(Latte(**SMALL))
    x, t = _inputs(frames=frames)
    with pytest.raises(ValueError, match=message):
        model(x, t, use_image_num=use_image_num)


def test_class_conditional_images_need_their_labels():
    model = _class_model()
    x, t = _inputs()
    y = Tensor(np.array([1, 4], np.int32))
    with pytest.raises(ValueError, match=r"use_image_num=2 with condition='class' needs y_image"):
        model(x, t, y, use_image_num=I)
    with pytest.raises(ValueError, match=r"y_image must have shape \(B, use_image_num\) = \(2, 2\)"):
        model(x, t, y, use_image_num=I, y_image=Tensor(np.zeros((2, 3), np.int32)))


def test_class_conditional_training_step_differentiates_in_graph_mode():
    """A loss through the joint path compiles with gradients; each image label's embedding row gets its
    gradient, a dropped image label's goes to the null row."""
    import mindspore as ms
    from mindspore import nn

    class Loss(nn.Cell):
        def __init__(self, network):
            super().__init__(auto_prefix=False)
            self.network = network

        def construct(self, x, t, y, drop, y_image, drop_image):
            out = self.network(x, t, y, None, drop, use_image_num=I, y_image=y_image, force_drop_ids_image=drop_image)
            return (out * out).mean()

    model = _class_model()
    table = model.y_embedder.embedding_table.weight
    grad_fn = ms.value_and_grad(Loss(model), None, [table])
    x, t = _inputs()
    loss, (grad,) = grad_fn(x, t, Tensor(np.array([1, 1], np.int32)), Tensor(np.zeros(2, np.int32)),
                            Tensor(np.array([[0, 2], [3, 0]], np.int32)), Tensor(np.array([[0, 0], [0, 1]], np.int32)))
    grad = grad.asnumpy()
    assert np.isfinite(loss.asnumpy()) and np.isfinite(grad).all()
    used = {1, 0, 2, 3, 5}  # video labels 1; images 0, 2, 3; the dropped image label -> null class 5
    assert {i for i in range(6) if np.abs(grad[i]).max() > 0} == used
