import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import mindspore as ms
from click.testing import CliRunner
from mindspore import Tensor

from latte_core import Latte
from latte_core.checkpoint import CheckpointError, load_safetensors_file, load_torch_file, read_state_dict
from latte_toolkit.cli import main

from conftest import relative_error


def _rewrite_pickle(source, target, payload):
    """Copy a torch zip checkpoint, replacing its data.pkl with `payload` bytes."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = payload if item.filename.endswith("data.pkl") else src.read(item.filename)
            dst.writestr(item, data)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_reader_prefers_ema_and_matches_safetensors(latte_fixture):
    raw = load_torch_file(latte_fixture["pt"])
    assert set(raw) == {"ema", "model"}
    state = read_state_dict(latte_fixture["pt"])
    reference = load_safetensors_file(latte_fixture["safetensors"])
    assert set(state) == set(reference)
    for name, array in reference.items():
        np.testing.assert_array_equal(state[name], array)


def test_pickled_code_is_refused_and_never_run(latte_fixture, tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    _rewrite_pickle(latte_fixture["pt"], evil, pickle.dumps({"ema": _Exploit(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load a pickled (posix|os)\.system"):
        read_state_dict(evil)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_files_give_a_clear_error(latte_fixture, tmp_path, suffix):
    source = latte_fixture["pt" if suffix == ".pt" else "safetensors"]
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(cut)):
        read_state_dict(cut)


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("source, target", [("pt", "out.ckpt"), ("safetensors", "out.safetensors")])
def test_convert_writes_a_file_that_loads_strictly(latte_fixture, tmp_path, source, target):
    target = tmp_path / target
    result = _invoke("convert", "latte", "--source", str(latte_fixture[source]), "--target", str(target))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["architecture"]["depth"] == 4
    model = Latte(**latte_fixture["config"])
    if target.suffix == ".ckpt":
        not_loaded, _ = ms.load_param_into_net(model, ms.load_checkpoint(str(target)), strict_load=True)
        assert not not_loaded
        ms.load_checkpoint(str(target), net=model, strict_load=True)
    else:
        ms.load_checkpoint(str(target), net=model, strict_load=True, format="safetensors")
    model.set_train(False)
    io = latte_fixture["io"]
    out = model(Tensor(io["x"]), Tensor(io["t"]), Tensor(io["y"])).asnumpy()
    assert relative_error(out, io["out_class"]) < 1e-4
    assert [p.name for p in model.trainable_params()][:1] == ["x_embedder.proj.weight"]
    assert not model.pos_embed.requires_grad and not model.temp_embed.requires_grad
    assert [f.name for f in tmp_path.iterdir()] == [target.name]  # no temporary files left


def test_convert_with_the_wrong_variant_or_bad_weights_writes_nothing(latte_fixture, tmp_path):
    target = tmp_path / "out.ckpt"
    result = _invoke("convert", "latte", "--source", str(latte_fixture["pt"]), "--target", str(target),
                     "--model", "Latte-XL/2")
    assert result.exit_code == 2 and "is not a Latte-XL/2 checkpoint" in result.output
    weights = read_state_dict(latte_fixture["safetensors"])
    weights["blocks.1.mlp.fc1.weight"][0, 0] = np.nan
    del weights["final_layer.linear.bias"]
    bad = tmp_path / "bad.ckpt"
    ms.save_checkpoint([{"name": k, "data": Tensor(v)} for k, v in weights.items()], str(bad))
    result = _invoke("convert", "latte", "--source", str(bad), "--target", str(target))
    assert result.exit_code == 2
    assert "missing (1): final_layer.linear.bias" in result.output
    assert "blocks.1.mlp.fc1.weight holds NaN or inf" in result.output
    assert not target.exists()


def test_cli_refuses_foreign_pickle_with_exit_code_2(latte_fixture, tmp_path):
    """The real console script: one error line, exit 2, no output file."""
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    _rewrite_pickle(latte_fixture["pt"], evil, pickle.dumps(_Exploit(str(marker)), protocol=2))
    target = tmp_path / "out.ckpt"
    latte = os.path.join(os.path.dirname(sys.executable), "latte")
    proc = subprocess.run([latte, "convert", "latte", "--source", str(evil), "--target", str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "refusing to load a pickled" in errors[0]
    assert not target.exists() and not marker.exists()
