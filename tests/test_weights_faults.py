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
import zipfile

import numpy as np
import pytest

from latte_core.checkpoint import CheckpointError, load_safetensors_file, load_torch_file, read_state_dict
from latte_core.convert import convert_latte

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")


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


def _one_error_line(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert not proc.stdout.strip(), proc.stdout  # no summary line
    return errors[0]


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