"""Damaged weight files and VAE folders: every fault is one clear error naming the file (and the tensor or
config key), exit code 2 from the `latte` command, and nothing written.

The broken files are made here from the fixtures (the small diffusers VAE, the small class Latte as
.safetensors and as a torch .pt zip), copied into tmp_path and then damaged in one way each."""
import json
import os
import pickletools
import shutil
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from latte_core import AutoencoderKL
from latte_core.checkpoint import CheckpointError, load_safetensors_file, load_torch_file, load_weights, read_state_dict
from latte_core.convert import convert_latte, convert_vae
from latte_toolkit.pipelines.cache import CacheError, run_cache
from latte_toolkit.pipelines.ingest import run_ingest

from media import moving_square_frames, write_mp4

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")
WEIGHTS = "diffusion_pytorch_model.safetensors"


# ------------------------------------------------------------------------------------------ damage makers
def _read_safetensors(path):
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + length]), data[8 + length:]


def _write_safetensors(path, header, body):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _tensors_by_offset(header):
    return sorted((name for name in header if name != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])


def _edit_header(path, edit):
    """Rewrite the JSON header of a safetensors file through edit(header, body) -> name of the tensor hit."""
    header, body = _read_safetensors(path)
    name = edit(header, len(body))
    _write_safetensors(path, header, body)
    return name


def _negative_shape(header, _):
    name = _tensors_by_offset(header)[0]
    header[name]["shape"] = [-1]
    return name


def _shape_disagrees_with_offsets(header, _):
    name = _tensors_by_offset(header)[1]
    header[name]["shape"] = [header[name]["shape"][0] * 2] + header[name]["shape"][1:]
    return name


def _overlapping_offsets(header, _):
    name = _tensors_by_offset(header)[1]  # moved one float32 down: its first value is also the first tensor's last
    start, stop = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start - 4, stop - 4]
    return name


def _offsets_past_the_end(header, body_size):
    name = _tensors_by_offset(header)[-1]
    start, stop = header[name]["data_offsets"]
    header[name]["data_offsets"] = [body_size, body_size + stop - start]
    return name


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overwrite(path, offset, payload):
    data = bytearray(path.read_bytes())
    data[offset:offset + len(payload)] = payload
    path.write_bytes(bytes(data))


# kind -> (damage(path) -> tensor name or None, words the error must contain)
SAFETENSORS_DAMAGE = {
    "truncated": (_truncate, "lies past the end of the file"),
    "absurd-header-length": (lambda p: _overwrite(p, 0, b"\xff" * 8), "is absurd"),
    "header-not-json": (lambda p: _overwrite(p, 8, b"\x00" * 16), "not valid JSON"),
    "negative-shape": (lambda p: _edit_header(p, _negative_shape), "invalid shape [-1]"),
    "shape-vs-offsets": (lambda p: _edit_header(p, _shape_disagrees_with_offsets), "span"),
    "overlapping-offsets": (lambda p: _edit_header(p, _overlapping_offsets), "overlap"),
    "offsets-past-the-end": (lambda p: _edit_header(p, _offsets_past_the_end), "lies past the end of the file"),
}


def _rewrite_zip(source, target, replace=None, drop=()):
    """Copy a torch zip, replacing members (name suffix -> bytes) and leaving out `drop` suffixes."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            if item.filename.endswith(tuple(drop)):
                continue
            data = next((v for k, v in replace.items() if item.filename.endswith(k)), None)
            dst.writestr(item, src.read(item.filename) if data is None else data)


def _pickle_of(path):
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        return archive.read(name)


def _storage_of(pickled, tensor):
    """(storage key, position of the tensor's first size element) of the first tensor named `tensor`:
    after its name come the storage record (key, location, numel), the offset, then the size tuple."""
    ops = list(pickletools.genops(pickled))
    at = next(i for i, (op, arg, _) in enumerate(ops) if op.name == "BINUNICODE" and arg == tensor)
    persid = next(i for i in range(at, len(ops)) if ops[i][0].name == "BINPERSID")
    key = next(arg for op, arg, _ in ops[at + 1:persid] if op.name == "BINUNICODE" and arg.isdigit())
    size_op, size, position = ops[persid + 2]
    assert size_op.name == "BININT1", size_op.name  # a one-byte int: patched in place below
    return key, position, size


TENSOR = "x_embedder.proj.bias"  # 96 float32 values in their own storage record


def _short_storage(source, target):
    key, _, _ = _storage_of(_pickle_of(source), TENSOR)
    with zipfile.ZipFile(source) as archive:
        raw = archive.read(next(n for n in archive.namelist() if n.endswith(f"data/{key}")))
    _rewrite_zip(source, target, replace={f"data/{key}": raw[: len(raw) // 2]})


def _missing_storage(source, target):
    key, _, _ = _storage_of(_pickle_of(source), TENSOR)
    _rewrite_zip(source, target, drop=(f"/data/{key}",))


def _size_past_storage(source, target):
    pickled = bytearray(_pickle_of(source))
    _, position, size = _storage_of(bytes(pickled), TENSOR)
    pickled[position + 1] = size + 100  # the tensor claims 196 values of a 96-value storage
    _rewrite_zip(source, target, replace={"data.pkl": bytes(pickled)})


def _truncated_zip(source, target):
    shutil.copy(source, target)
    _truncate(target)


def _overwritten_storage_bytes(source, target):
    """Bytes of a stored (uncompressed) storage record overwritten in place: its CRC no longer matches."""
    key, _, _ = _storage_of(_pickle_of(source), TENSOR)
    shutil.copy(source, target)
    os.chmod(target, 0o644)
    with zipfile.ZipFile(source) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(f"data/{key}"))
    header = target.read_bytes()[info.header_offset:info.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    _overwrite(target, info.header_offset + 30 + name_len + extra_len, b"\x7f" * 16)


TORCH_DAMAGE = {
    "short-storage": (_short_storage, "holds 192 bytes, the checkpoint expects 96 FloatStorage values"),
    "missing-storage": (_missing_storage, "is missing from the archive"),
    "size-past-storage": (_size_past_storage, f"tensor ema/{TENSOR}: size [196]"),
    "truncated-zip": (_truncated_zip, "not a readable zip-format torch checkpoint"),
    "overwritten-storage-bytes": (_overwritten_storage_bytes, "is unreadable (Bad CRC-32"),
}


def _vae_copy(fixtures_dir, folder):
    shutil.copytree(fixtures_dir / "vae" / "vae_small_diffusers", folder)
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _nan_weights(folder):
    header, _ = _read_safetensors(folder / WEIGHTS)
    name = _tensors_by_offset(header)[0]
    start, _ = header[name]["data_offsets"]
    _overwrite(folder / WEIGHTS, 8 + len(json.dumps(header).encode()) + start, b"\xff" * 4)  # float32 NaN


# kind -> (damage(folder), words the error must contain, the file the error must name)
VAE_FOLDER_DAMAGE = {
    "weights-truncated": (lambda f: _truncate(f / WEIGHTS), "lies past the end of the file", WEIGHTS),
    "weights-header-overwritten": (lambda f: _overwrite(f / WEIGHTS, 8, b"\x00" * 16), "not valid JSON", WEIGHTS),
    "weights-nan-bytes": (_nan_weights, "holds NaN or inf", WEIGHTS),
    "weights-negative-shape": (lambda f: _edit_header(f / WEIGHTS, _negative_shape), "invalid shape [-1]", WEIGHTS),
    "no-config": (lambda f: (f / "config.json").unlink(), "has no config.json", ""),
    "scaling-factor-null": (lambda f: _edit_config(f, scaling_factor=None), "'scaling_factor' is null", "config.json"),
    "scaling-factor-negative": (lambda f: _edit_config(f, scaling_factor=-0.5),
                                "'scaling_factor' must be a positive finite number, got -0.5", "config.json"),
    "block-out-channels-string": (lambda f: _edit_config(f, block_out_channels="64"),
                                  "'block_out_channels' must be a non-empty list of positive integers, got \"64\"",
                                  "config.json"),
    "latent-channels-string": (lambda f: _edit_config(f, latent_channels="4"),
                               "'latent_channels' must be a positive integer, got \"4\" (str)", "config.json"),
    "norm-groups-float": (lambda f: _edit_config(f, norm_num_groups=3.5),
                          "'norm_num_groups' must be a positive integer, got 3.5 (float)", "config.json"),
    "norm-groups-do-not-divide": (lambda f: _edit_config(f, norm_num_groups=3),
                                  "norm_num_groups 3 does not divide block_out_channels [32, 64, 64]", "config.json"),
}


# ------------------------------------------------------------------------------------------ Python level
@pytest.mark.parametrize("kind", sorted(SAFETENSORS_DAMAGE))
def test_damaged_safetensors_is_refused_naming_file_and_tensor(latte_fixture, tmp_path, kind):
    damage, words = SAFETENSORS_DAMAGE[kind]
    path = tmp_path / "latte.safetensors"
    shutil.copy(latte_fixture["safetensors"], path)
    os.chmod(path, 0o644)
    tensor = damage(path)
    with pytest.raises(CheckpointError) as err:
        load_safetensors_file(path)
    message = str(err.value)
    assert message.startswith(str(path)) and words in message, message
    if tensor is not None:
        assert tensor in message, message


def test_undamaged_safetensors_still_read_including_our_own_output(latte_fixture, tmp_path):
    """The checks refuse nothing valid: the fixture, and the .safetensors MindSpore writes on convert."""
    reference = load_safetensors_file(latte_fixture["safetensors"])
    target = tmp_path / "converted.safetensors"
    convert_latte(latte_fixture["safetensors"], target)
    again = load_safetensors_file(target)
    assert set(again) == set(reference)
    for name, array in reference.items():
        np.testing.assert_array_equal(again[name], array)


@pytest.mark.parametrize("kind", sorted(TORCH_DAMAGE))
def test_damaged_torch_zip_is_refused_naming_the_file(latte_fixture, tmp_path, kind):
    damage, words = TORCH_DAMAGE[kind]
    path = tmp_path / "latte.pt"
    damage(latte_fixture["pt"], path)
    with pytest.raises(CheckpointError) as err:
        load_torch_file(path)
    message = str(err.value)
    assert message.startswith(str(path)) and words in message, message
    with pytest.raises(CheckpointError):
        read_state_dict(path)


@pytest.mark.parametrize("kind", sorted(VAE_FOLDER_DAMAGE))
def test_damaged_vae_folder_is_refused_by_every_loader(fixtures_dir, tmp_path, kind):
    """from_pretrained and load_vae (every command's VAE loader) and convert vae refuse it; nothing written."""
    from latte_core.vae import load_vae
    damage, words, file_name = VAE_FOLDER_DAMAGE[kind]
    folder = _vae_copy(fixtures_dir, tmp_path / "vae")
    damage(folder)
    named = str(folder / file_name) if file_name else str(folder)
    for load in (AutoencoderKL.from_pretrained, load_vae):
        with pytest.raises(CheckpointError) as err:
            load(str(folder))
        assert named in str(err.value) and words in str(err.value), str(err.value)
    target = tmp_path / "vae.ckpt"
    with pytest.raises(CheckpointError, match="lies past|JSON|NaN|shape|config.json|scaling|channels|groups"):
        convert_vae(folder, target)
    assert not target.exists()


@pytest.mark.parametrize("changes, words", [
    ({"scaling_factor": float("nan")}, "'scaling_factor' must be a positive finite number, got NaN"),
    ({"scaling_factor": 0}, "'scaling_factor' must be a positive finite number, got 0 (int)"),
    ({"scaling_factor": "0.18215"}, "'scaling_factor' must be a positive finite number"),
    ({"layers_per_block": 0}, "'layers_per_block' must be a positive integer, got 0"),
    ({"in_channels": True}, "'in_channels' must be a positive integer, got true (bool)"),
    ({"block_out_channels": []}, "'block_out_channels' must be a non-empty list"),
    ({"block_out_channels": [32, "64"]}, "'block_out_channels' must be a non-empty list of positive integers"),
    ({"use_quant_conv": None}, "'use_quant_conv' must be true or false, got null"),
    ({"down_block_types": "DownEncoderBlock2D"}, "down_block_types must be 3 x DownEncoderBlock2D"),
])
def test_vae_config_keys_are_checked_by_type_and_value(fixtures_dir, changes, words):
    config = json.loads((fixtures_dir / "vae" / "vae_small_diffusers" / "config.json").read_text())
    config.update(changes)
    with pytest.raises(ValueError) as err:
        AutoencoderKL.from_config(config, "my/config.json")
    assert str(err.value).startswith("my/config.json: ") and words in str(err.value), str(err.value)
    with pytest.raises(ValueError, match="must be a JSON object"):
        AutoencoderKL.from_config([config], "my/config.json")


def test_an_absent_scaling_factor_keeps_the_diffusers_default(fixtures_dir):
    config = json.loads((fixtures_dir / "vae" / "vae_small_diffusers" / "config.json").read_text())
    del config["scaling_factor"]
    assert AutoencoderKL.from_config(config).config["scaling_factor"] == 0.18215  # the default, stored as given


def test_a_vae_checkpoint_file_that_is_damaged_is_refused_by_load_weights(fixtures_dir, tmp_path):
    """`sample --vae FILE` loads a weights file into the default architecture: a damaged one is one error."""
    path = tmp_path / "vae.safetensors"
    shutil.copy(fixtures_dir / "vae" / "vae_small_diffusers" / WEIGHTS, path)
    os.chmod(path, 0o644)
    _truncate(path)
    config = json.loads((fixtures_dir / "vae" / "vae_small_diffusers" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=f"{path}: tensor .* lies past the end"):
        load_weights(AutoencoderKL.from_config(config), path)


# ------------------------------------------------------------------------------------------ the cache job
@pytest.fixture(scope="module")
def one_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_src")
    write_mp4(root / "src" / "clip_0.mp4", moving_square_frames(8, height=32, width=32, seed=0))
    write_mp4(root / "src" / "clip_1.mp4", moving_square_frames(8, height=32, width=32, seed=1))
    run_ingest([root / "src"], root / "ingest", workers=0, progress=False)
    return root / "ingest"


@pytest.mark.parametrize("kind", ["weights-truncated", "weights-nan-bytes", "no-config", "scaling-factor-null",
                                  "norm-groups-do-not-divide"])
def test_cache_checks_the_vae_before_writing_anything(fixtures_dir, one_video, tmp_path, kind):
    damage, words, file_name = VAE_FOLDER_DAMAGE[kind]
    folder = _vae_copy(fixtures_dir, tmp_path / "vae")
    damage(folder)
    out = tmp_path / "cache"
    with pytest.raises(CacheError) as err:
        run_cache(one_video, folder, out, image_size=32, workers=0, progress=False)
    assert str(folder / file_name) in str(err.value) and words in str(err.value), str(err.value)
    assert not out.exists()


def _one_error_line(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert not proc.stdout.strip(), proc.stdout  # no summary line
    return errors[0]


def _cache_command(manifest, vae, out, workers=0):
    return [LATTE, "cache", "--manifest", str(manifest), "--vae", str(vae), "--out", str(out), "--image-size", "32",
            "--workers", str(workers), "--micro-batch", "4"]


# a subprocess costs ~2.5 s (MindSpore's import): one per kind of fault here, every kind at Python level above
@pytest.mark.parametrize("kind", ["weights-truncated", "scaling-factor-null"])
def test_latte_cache_with_a_damaged_vae_exits_2_and_writes_nothing(fixtures_dir, one_video, tmp_path, kind):
    damage, words, file_name = VAE_FOLDER_DAMAGE[kind]
    folder = _vae_copy(fixtures_dir, tmp_path / "vae")
    damage(folder)
    out = tmp_path / "cache"
    proc = subprocess.run(_cache_command(one_video, folder, out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert str(folder / file_name) in line and words in line, line
    assert not out.exists()


def test_a_vae_that_fails_inside_a_worker_is_a_failed_shard_not_success(fixtures_dir, one_video, tmp_path):
    """The VAE is damaged after the job checked it (cache.json written) and before the dask worker
    loads it: that shard raised, its videos count as failed, exit code 1, and a re-run retries it."""
    folder = _vae_copy(fixtures_dir, tmp_path / "vae")
    out = tmp_path / "cache"
    proc = subprocess.Popen(_cache_command(one_video, folder, out, workers=1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "cache.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    _truncate(folder / WEIGHTS)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "0 videos, 0 frames cached, 2 failed; 1 shards run" in stdout, stdout
    assert "the VAE folder changed since the cache job validated it" in stderr
    assert "1 shard(s) raised, their 2 video(s) are not cached" in stderr
    assert not (out / "ledger.jsonl").exists() or not (out / "ledger.jsonl").read_text().strip()


# ------------------------------------------------------------------------------------------ latte convert
@pytest.mark.parametrize("suffix, kind", [(".safetensors", "negative-shape"), (".pt", "short-storage"),
                                          (".pt", "truncated-zip")])
def test_latte_convert_latte_refuses_a_damaged_file(latte_fixture, tmp_path, suffix, kind):
    source = tmp_path / f"latte{suffix}"
    if suffix == ".pt":
        damage, words = TORCH_DAMAGE[kind]
        damage(latte_fixture["pt"], source)
    else:
        damage, words = SAFETENSORS_DAMAGE[kind]
        shutil.copy(latte_fixture["safetensors"], source)
        os.chmod(source, 0o644)
        damage(source)
    target = tmp_path / "out.ckpt"
    proc = subprocess.run([LATTE, "convert", "latte", "--source", str(source), "--target", str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert str(source) in line and words in line, line
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == [source.name]


@pytest.mark.parametrize("kind", ["norm-groups-float"])
def test_latte_convert_vae_refuses_a_damaged_folder(fixtures_dir, tmp_path, kind):
    damage, words, file_name = VAE_FOLDER_DAMAGE[kind]
    folder = _vae_copy(fixtures_dir, tmp_path / "vae")
    damage(folder)
    target = tmp_path / "vae.ckpt"
    proc = subprocess.run([LATTE, "convert", "vae", "--source", str(folder), "--target", str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert str(folder / file_name) in line and words in line, line
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["vae"]


@pytest.mark.parametrize("kind", ["no-config", "scaling-factor-null", "weights-header-overwritten"])
def test_latte_sample_with_a_damaged_vae_is_one_error_and_writes_nothing(latte_fixture, fixtures_dir, tmp_path, kind):
    from click.testing import CliRunner
    from latte_toolkit.cli import main
    damage, words, file_name = VAE_FOLDER_DAMAGE[kind]
    folder = _vae_copy(fixtures_dir, tmp_path / "vae")
    damage(folder)
    out = tmp_path / "samples"
    config = tmp_path / "sample.yaml"
    config.write_text(json.dumps({"checkpoint": str(latte_fixture["pt"]), "model_name": "Latte-S/2",
                                  "output_path": str(out)}))  # JSON is YAML
    result = CliRunner().invoke(main, ["sample", "-c", str(config), "--vae", str(folder)])
    assert result.exit_code == 2, result.output
    assert str(folder / file_name) in result.output and words in result.output, result.output
    assert not out.exists()
