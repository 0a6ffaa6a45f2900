import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from latte_core import LATTE_MODELS, Latte, create_latte
from latte_core.checkpoint import CheckpointError, load_weights, read_state_dict
from latte_core.latte import get_2d_sincos_pos_embed, latte_config_from_state_dict

from conftest import relative_error


def test_registry_has_the_twelve_published_variants():
    expected = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    assert len(LATTE_MODELS) == 12
    for size, (depth, hidden, heads) in expected.items():
        for patch in (2, 4, 8):
            assert LATTE_MODELS[f"Latte-{size}/{patch}"] == dict(
                depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)
    with pytest.raises(ValueError, match="Latte-S/2"):
        create_latte("Latte-M/2")


def test_parameter_names_and_shapes_match_the_official_checkpoint(latte_fixture):
    model = Latte(**latte_fixture["config"])
    ours = {p.name: tuple(p.shape) for p in model.get_parameters()}
    official = {k: tuple(v.shape) for k, v in read_state_dict(latte_fixture["pt"]).items()}
    assert ours == official
    trainable = {p.name for p in model.trainable_params()}
    assert trainable == set(official) - {"pos_embed", "temp_embed"}


def _load(latte_fixture, source, **overrides):
    model = Latte(**{**latte_fixture["config"], **overrides})
    load_weights(model, latte_fixture[source], recompute=("pos_embed", "temp_embed"))
    model.set_train(False)
    return model


class _CFG(nn.Cell):
    def __init__(self, model, scale):
        super().__init__()
        self.model = model
        self.scale = scale

    def construct(self, x, t, y):
        return self.model.forward_with_cfg(x, t, y, self.scale)


@pytest.mark.parametrize("source", ["pt", "safetensors"])
def test_forward_and_cfg_match_the_pytorch_reference(latte_fixture, source, kernel_path):
    io = latte_fixture["io"]
    model = _load(latte_fixture, source)
    assert (model.blocks[0].attn.kernel is not None) == kernel_path
    out = model(Tensor(io["x"]), Tensor(io["t"]), Tensor(io["y"])).asnumpy()
    assert out.shape == io["out_class"].shape
    assert relative_error(out, io["out_class"]) < 1e-4
    cfg = _CFG(model, 4.0)(Tensor(io["cfg_x"]), Tensor(np.array([50, 50], io["t"].dtype)), Tensor(io["cfg_y"]))
    assert relative_error(cfg.asnumpy(), io["out_cfg4"]) < 1e-4
    # the variance channels pass through unguided: they equal a plain forward's
    plain = model(Tensor(io["cfg_x"]), Tensor(np.array([50, 50], io["t"].dtype)), Tensor(io["cfg_y"])).asnumpy()
    np.testing.assert_allclose(cfg.asnumpy()[:, :, 4:], plain[:, :, 4:], rtol=1e-5, atol=1e-6)


def test_checkpoint_loads_into_a_model_for_other_frames_and_size(latte_fixture):
    model = _load(latte_fixture, "pt", num_frames=6, input_size=12)
    assert tuple(model.temp_embed.shape) == (1, 6, 96) and tuple(model.pos_embed.shape) == (1, 36, 96)
    np.testing.assert_allclose(model.pos_embed.asnumpy()[0], get_2d_sincos_pos_embed(96, 6), atol=1e-6)
    x = np.random.default_rng(0).standard_normal((1, 6, 4, 12, 12)).astype(np.float32)
    out = model(Tensor(x), Tensor(np.array([10], np.int32)), Tensor(np.array([1], np.int32))).asnumpy()
    assert out.shape == (1, 6, 8, 12, 12) and np.isfinite(out).all()


def test_the_same_sizes_reproduce_the_checkpoint_tables(latte_fixture):
    """Our sin-cos tables equal the ones stored in the official checkpoint."""
    state = read_state_dict(latte_fixture["pt"])
    model = Latte(**latte_fixture["config"])
    np.testing.assert_allclose(model.pos_embed.asnumpy(), state["pos_embed"], atol=1e-6)
    np.testing.assert_allclose(model.temp_embed.asnumpy(), state["temp_embed"], atol=1e-6)


def test_architecture_is_read_off_the_weights(latte_fixture):
    config = latte_config_from_state_dict(read_state_dict(latte_fixture["pt"]))
    for key in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_frames",
                "learn_sigma", "condition", "num_classes"):
        assert config[key] == latte_fixture["config"][key], key


def test_linear_patch_embedder_equals_conv_with_reshaped_weights(latte_fixture):
    io = latte_fixture["io"]
    conv = _load(latte_fixture, "pt")
    linear = Latte(**latte_fixture["config"], patch_embedder="linear")
    state = {p.name: p.asnumpy() for p in conv.get_parameters()}
    state["x_embedder.proj.weight"] = state["x_embedder.proj.weight"].reshape(96, -1)
    for p in linear.get_parameters():
        p.set_data(Tensor(state[p.name]))
    linear.set_train(False)
    a = conv(Tensor(io["x"]), Tensor(io["t"]), Tensor(io["y"])).asnumpy()
    b = linear(Tensor(io["x"]), Tensor(io["t"]), Tensor(io["y"])).asnumpy()
    assert relative_error(b, a) < 1e-5


def test_unconditional_and_text_conditioned_variants_run():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 2, 4, 8, 8)).astype(np.float32))
    t = Tensor(np.array([1, 999], np.int32))
    plain = create_latte("Latte-S/8", input_size=8, num_frames=2, learn_sigma=False)
    assert plain(x, t).shape == (2, 2, 4, 8, 8)
    text = Latte(input_size=8, patch_size=4, hidden_size=64, depth=2, num_heads=4, num_frames=2, condition="text")
    emb = Tensor(rng.standard_normal((2, 77, 768)).astype(np.float32))
    assert "text_embedding_projection.1.weight" in {p.name for p in text.get_parameters()}
    assert text(x, t, text_embedding=emb).shape == (2, 2, 8, 8, 8)


def test_label_dropout_uses_the_null_class():
    model = Latte(input_size=4, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_frames=2,
                  condition="class", num_classes=3, class_dropout_prob=0.5)
    table = model.y_embedder.embedding_table.weight.asnumpy()
    assert table.shape == (4, 32)
    labels = Tensor(np.array([0, 1, 2], np.int32))
    dropped = model.y_embedder(labels, Tensor(np.array([1, 0, 1], np.int32))).asnumpy()
    np.testing.assert_array_equal(dropped, table[[3, 1, 3]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(condition="image"), "condition must be one of"),
    (dict(patch_embedder="pixel"), "patch_embedder must be one of"),
    (dict(depth=3), "must be even"),
    (dict(input_size=9), "not divisible by patch_size"),
    (dict(num_heads=3), "not divisible by num_heads"),
])
def test_bad_configurations_are_rejected_with_a_clear_message(kwargs, message):
    base = dict(input_size=8, patch_size=2, hidden_size=40, depth=2, num_heads=4, num_frames=2)
    with pytest.raises(ValueError, match=message):
        Latte(**{**base, **kwargs})


def test_checkpoint_of_another_architecture_is_refused_listing_keys(latte_fixture):
    model = Latte(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_frames=4)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, latte_fixture["pt"])
    text = str(err.value)
    # blocks 2-3 (2 × 10 tensors) and the class table are extra; the list is cut after 12 names
    assert "unexpected (21): blocks.2.adaLN_modulation.1.bias" in text
    assert "wrong" in text and "blocks.0.attn.qkv.weight (288, 96) != model (192, 64)" in text
