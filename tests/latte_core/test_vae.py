import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import mindspore as ms
from click.testing import CliRunner
from mindspore import Tensor
from safetensors.numpy import load_file, save_file

from latte_core import AutoencoderKL
from latte_core.checkpoint import CheckpointError, load_weights
from latte_toolkit.cli import main

from conftest import relative_error

OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@pytest.fixture(scope="module")
def vae_fixture(fixtures_dir):
    folder = fixtures_dir / "vae" / "vae_small_diffusers"
    return {
        "folder": folder,
        "config": json.loads((folder / "config.json").read_text()),
        "weights": load_file(str(folder / "diffusion_pytorch_model.safetensors")),
        "io": dict(np.load(fixtures_dir / "vae" / "vae_small_io.npz")),
    }


def _assert_matches_reference(vae, io):
    posterior = vae.encode(Tensor(io["img"]))
    assert relative_error(posterior.mean.asnumpy(), io["mean"]) < 1e-4
    assert relative_error(posterior.logvar.asnumpy(), io["logvar"]) < 1e-4
    decoded = vae.decode_video(io["mean"][:, None])[:, 0]  # (B, 1, C, h, w): one-frame videos
    assert relative_error(decoded, io["dec"]) < 1e-4


def _write_folder(folder, config, weights):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_diffusers_folder_matches_the_pytorch_reference(vae_fixture, kernel_path):
    vae = AutoencoderKL.from_pretrained(vae_fixture["folder"])
    assert (vae.encoder.conv_norm_out.kernel is not None) == kernel_path
    assert (vae.decoder.conv_in.kernel is not None) == kernel_path
    assert vae.downsample_factor == 4 and vae.scaling_factor == pytest.approx(0.18215)
    assert {p.name for p in vae.get_parameters()} == set(vae_fixture["weights"])
    _assert_matches_reference(vae, vae_fixture["io"])


def test_older_attention_names_load_and_match(vae_fixture, tmp_path):
    renamed = {}
    for name, value in vae_fixture["weights"].items():
        for new, old in OLD_ATTENTION_NAMES.items():
            name = name.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        renamed[name] = value
    assert any(".query.weight" in name for name in renamed)
    vae = AutoencoderKL.from_pretrained(_write_folder(tmp_path / "old", vae_fixture["config"], renamed))
    _assert_matches_reference(vae, vae_fixture["io"])


def _to_ldm_layout(weights, levels=3):
    """diffusers names -> the original latent-diffusion single-file names, attention as 1x1 convs."""
    ldm = {}
    for name, value in weights.items():
        parts = name.split(".")
        if parts[1] == "down_blocks":
            kind = f"block.{parts[4]}" if parts[3] == "resnets" else "downsample"
            name = f"encoder.down.{parts[2]}.{kind}.{'.'.join(parts[5:])}"
        elif parts[1] == "up_blocks":
            level = levels - 1 - int(parts[2])
            kind = f"block.{parts[4]}" if parts[3] == "resnets" else "upsample"
            name = f"decoder.up.{level}.{kind}.{'.'.join(parts[5:])}"
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            name = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        elif parts[1] == "mid_block":
            sub = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[4]]
            name = f"{parts[0]}.mid.attn_1.{sub}.{parts[-1]}"
            if sub != "norm" and parts[-1] == "weight":
                value = value.reshape(value.shape + (1, 1))
        name = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        ldm["first_stage_model." + name] = value
    return ldm


def test_ldm_single_file_converts_and_matches(vae_fixture, tmp_path):
    ldm = _to_ldm_layout(vae_fixture["weights"])
    assert "first_stage_model.decoder.up.0.block.2.conv2.weight" in ldm
    ldm["first_stage_model.loss.logvar"] = np.zeros((), np.float32)  # training-only extras are dropped
    source = tmp_path / "vae-ldm.safetensors"
    save_file(ldm, str(source))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(vae_fixture["config"]))
    target = tmp_path / "vae.ckpt"
    result = CliRunner().invoke(main, ["convert", "vae", "--source", str(source), "--target", str(target),
                                       "--config", str(config_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    vae = AutoencoderKL.from_config(vae_fixture["config"])
    ms.load_checkpoint(str(target), net=vae, strict_load=True)
    _assert_matches_reference(vae, vae_fixture["io"])


def test_converting_a_diffusers_folder_round_trips(vae_fixture, tmp_path):
    target = tmp_path / "vae.safetensors"
    result = CliRunner().invoke(main, ["convert", "vae", "--source", str(vae_fixture["folder"]),
                                       "--target", str(target)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    vae = AutoencoderKL.from_config(vae_fixture["config"])
    load_weights(vae, target)
    _assert_matches_reference(vae, vae_fixture["io"])


def test_micro_batched_video_encode_and_decode_equal_whole_batch(vae_fixture):
    vae = AutoencoderKL.from_pretrained(vae_fixture["folder"])
    video = np.random.default_rng(0).uniform(-1, 1, (2, 5, 3, 32, 32)).astype(np.float32)
    mean_whole, std_whole = vae.encode_video(video, micro_batch=10)
    mean_micro, std_micro = vae.encode_video(video, micro_batch=3)
    assert mean_whole.shape == (2, 5, 4, 8, 8)
    np.testing.assert_allclose(mean_micro, mean_whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std_micro, std_whole, rtol=1e-5, atol=1e-6)
    # frame (1, 2) of the video is image 7 of the flattened batch
    single = vae.encode(Tensor(video[1, 2][None])).mean.asnumpy()[0]
    np.testing.assert_allclose(mean_micro[1, 2], single, rtol=1e-5, atol=1e-6)
    frames = vae.decode_video(mean_whole, micro_batch=4)
    np.testing.assert_allclose(frames, vae.decode_video(mean_whole, micro_batch=10), rtol=1e-5, atol=1e-6)
    assert frames.shape == (2, 5, 3, 32, 32)


def test_posterior_sampling_and_scaling(vae_fixture):
    vae = AutoencoderKL.from_pretrained(vae_fixture["folder"])
    posterior = vae.encode(Tensor(vae_fixture["io"]["img"]))
    noise = np.random.default_rng(1).standard_normal(posterior.mean.shape).astype(np.float32)
    sample = posterior.sample(Tensor(noise)).asnumpy()
    expected = vae_fixture["io"]["mean"] + np.exp(0.5 * vae_fixture["io"]["logvar"]) * noise
    assert relative_error(sample, expected) < 1e-4
    np.testing.assert_array_equal(posterior.mode().asnumpy(), posterior.mean.asnumpy())
    latents = vae.scale_latents(posterior.mean)
    np.testing.assert_allclose(latents.asnumpy(), posterior.mean.asnumpy() * 0.18215, rtol=1e-6)
    np.testing.assert_allclose(vae.unscale_latents(latents).asnumpy(), posterior.mean.asnumpy(), rtol=1e-5)


def test_bad_folders_and_weights_give_one_clear_error(vae_fixture, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        AutoencoderKL.from_pretrained(tmp_path)
    config = dict(vae_fixture["config"])
    del config["block_out_channels"]
    folder = _write_folder(tmp_path / "nokey", config, vae_fixture["weights"])
    with pytest.raises(CheckpointError, match=r"config.json: missing key\(s\) block_out_channels"):
        AutoencoderKL.from_pretrained(folder)
    weights = dict(vae_fixture["weights"])
    weights["decoder.conv_in.weight"] = np.zeros((64, 4, 1, 1), np.float32)
    weights["encoder.conv_in.bias"] = np.full(32, np.inf, np.float32)
    folder = _write_folder(tmp_path / "shapes", vae_fixture["config"], weights)
    with pytest.raises(CheckpointError) as err:
        AutoencoderKL.from_pretrained(folder)
    assert "decoder.conv_in.weight (64, 4, 1, 1) != model (64, 4, 3, 3)" in str(err.value)
    assert "encoder.conv_in.bias holds NaN or inf" in str(err.value)


def test_bin_with_foreign_pickle_is_refused_and_nothing_written(vae_fixture, latte_fixture, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(vae_fixture["folder"] / "config.json", folder / "config.json")
    with zipfile.ZipFile(latte_fixture["pt"]) as src, zipfile.ZipFile(folder / "diffusion_pytorch_model.bin", "w") as dst:
        for item in src.infolist():
            payload = pickle.dumps(print, protocol=2) if item.filename.endswith("data.pkl") else src.read(item.filename)
            dst.writestr(item, payload)
    target = tmp_path / "vae.ckpt"
    result = CliRunner().invoke(main, ["convert", "vae", "--source", str(folder), "--target", str(target)])
    assert result.exit_code == 2
    assert "diffusion_pytorch_model.bin: refusing to load a pickled __builtin__.print" in result.output
    assert not target.exists()


def test_float16_compute_stays_close_to_float32(vae_fixture):
    vae = AutoencoderKL.from_pretrained(vae_fixture["folder"]).set_compute_dtype(ms.float16)
    posterior = vae.encode(Tensor(vae_fixture["io"]["img"]))
    assert posterior.mean.dtype == ms.float32
    assert relative_error(posterior.mean.asnumpy(), vae_fixture["io"]["mean"]) < 1e-2
    decoded = vae.decode_video(vae_fixture["io"]["mean"][:, None])[:, 0]
    assert decoded.dtype == np.float32 and relative_error(decoded, vae_fixture["io"]["dec"]) < 1e-2
    with pytest.raises(ValueError, match="float16 or float32"):
        vae.set_compute_dtype(ms.int32)


def test_save_pretrained_round_trips(vae_fixture, tmp_path):
    vae = AutoencoderKL.from_pretrained(vae_fixture["folder"])
    vae.encode(Tensor(vae_fixture["io"]["img"]))  # compiling the encoder must not rename parameters
    again = AutoencoderKL.from_pretrained(vae.save_pretrained(tmp_path / "copy"))
    assert again.config == vae.config
    _assert_matches_reference(again, vae_fixture["io"])


def test_encode_works_after_decode(vae_fixture):
    """Calling the VAE (decode) in graph mode makes nn.Cell set its own `_compiled` flag; the encoder's
    entry point must live elsewhere (`latte quality` decodes noise, then encodes)."""
    vae = AutoencoderKL.from_pretrained(vae_fixture["folder"])
    io = vae_fixture["io"]
    vae.decode_video(io["mean"][:, None])
    assert relative_error(vae.encode(Tensor(io["img"])).mean.asnumpy(), io["mean"]) < 1e-4
