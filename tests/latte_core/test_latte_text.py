"""Text-conditioned Latte: parity with the official model through `latte convert latte`, any encoder width
(text_embed_dim, read back off the weights), and a wrong width refused by name."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from click.testing import CliRunner
from mindspore import Tensor

from latte_core import Latte, TextEncoder
from latte_toolkit.cli import main

from conftest import relative_error

SMALL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_frames=4)


@pytest.fixture(scope="module")
def latte_text_fixture(fixtures_dir):
    folder = fixtures_dir / "text"
    return {"pt": folder / "latte_text_small.pt",
            "config": json.loads((folder / "latte_text_small_config.json").read_text()),
            "io": dict(np.load(folder / "latte_text_small_io.npz"))}


def _random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    for param in model.trainable_params():
        param.set_data(Tensor(rng.normal(0.0, 0.05, param.shape).astype(np.float32)))
    return model.set_train(False)


def test_converted_official_checkpoint_matches_the_reference(latte_text_fixture, tmp_path):
    """The real console script in a subprocess, then a strict load and the eval-mode forward."""
    target = tmp_path / "latte_text.ckpt"
    latte = os.path.join(os.path.dirname(sys.executable), "latte")
    proc = subprocess.run([latte, "convert", "latte", "--source", str(latte_text_fixture["pt"]),
                           "--target", str(target)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    architecture = json.loads(proc.stdout.strip().splitlines()[-1])["architecture"]
    assert architecture["condition"] == "text" and architecture["text_embed_dim"] == 768
    model = Latte(**latte_text_fixture["config"], condition="text")
    ms.load_checkpoint(str(target), net=model, strict_load=True)
    model.set_train(False)
    io = latte_text_fixture["io"]
    out = model(Tensor(io["x"]), Tensor(io["t"]), text_embedding=Tensor(io["text_embedding"])).asnumpy()
    assert relative_error(out, io["out"]) < 1e-4  # float32 vs the reference's float32 forward (fixture README)


def test_another_encoder_width_is_read_back_off_the_weights(tmp_path):
    from latte_core.checkpoint import save_weights
    model = _random_weights(Latte(**SMALL, condition="text", text_embed_dim=32))
    assert model.text_embedding_projection[1].weight.shape == (32, 77 * 32)
    source = save_weights({p.name: p.asnumpy() for p in model.get_parameters()}, tmp_path / "w32.safetensors")
    target = tmp_path / "converted.ckpt"
    result = CliRunner().invoke(main, ["convert", "latte", "--source", str(source), "--target", str(target)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    architecture = json.loads(result.output.strip().splitlines()[-1])["architecture"]
    assert architecture["text_embed_dim"] == 32
    rebuilt = Latte(**{**architecture, "num_heads": 2})  # the head count is not in the weights
    ms.load_checkpoint(str(target), net=rebuilt, strict_load=True)
    rebuilt.set_train(False)
    rng = np.random.default_rng(1)
    x = Tensor(rng.normal(size=(2, 4, 4, 8, 8)).astype(np.float32))
    t = Tensor(np.array([10, 500]))
    emb = Tensor(rng.normal(size=(2, 77, 32)).astype(np.float32))
    np.testing.assert_array_equal(rebuilt(x, t, text_embedding=emb).asnumpy(),
                                  model(x, t, text_embedding=emb).asnumpy())


def test_conditions_on_a_text_encoders_output(fixtures_dir):
    encoder = TextEncoder.from_pretrained(fixtures_dir / "text" / "clip_text_small")
    model = _random_weights(Latte(**SMALL, condition="text", text_embed_dim=encoder.width))
    x = Tensor(np.random.default_rng(2).normal(size=(2, 4, 4, 8, 8)).astype(np.float32))
    t = Tensor(np.array([100, 100]))
    left, again, right = (model(x, t, text_embedding=Tensor(encoder.encode([p] * 2))).asnumpy()
                          for p in ("clouds drifting left", "clouds drifting left", "clouds drifting right"))
    assert left.shape == (2, 4, 8, 8, 8)
    np.testing.assert_array_equal(left, again)
    # another caption moves the output far beyond float32 rounding (~1e-7): the embedding reaches it
    assert relative_error(left, right) > 1e-5


def test_a_wrong_embedding_width_names_both_widths():
    model = _random_weights(Latte(**SMALL, condition="text"))  # the default width, CLIP-L's 768
    x, t = Tensor(np.zeros((1, 4, 4, 8, 8), np.float32)), Tensor(np.array([1]))
    with pytest.raises(ValueError, match=r"text_embedding of width 1024 given, the model expects width 768"):
        model(x, t, text_embedding=Tensor(np.zeros((1, 77, 1024), np.float32)))
    with pytest.raises(ValueError, match="text_embed_dim must be a positive integer"):
        Latte(**SMALL, condition="text", text_embed_dim=0)
