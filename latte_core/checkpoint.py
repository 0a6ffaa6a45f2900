"""Reading official PyTorch checkpoints without torch, and loading/saving MindSpore weights.

`.pt`/`.pth`/`.bin` files written by `torch.save` are zip archives holding a pickle (`data.pkl`)
and one raw file per storage. They are read with a restricted unpickler that only knows how to
rebuild tensors and plain containers: any other global in the pickle is refused, so no pickled code
is ever executed. `.safetensors` files are parsed directly (bfloat16 included).
"""
import collections
import json
import logging
import os
import pickle
import struct
import tempfile
import zipfile

import numpy as np

from .errors import UserError

logger = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or does not fit the model; the message names the file."""


# torch storage class name -> numpy dtype ("bfloat16" is widened to float32 after reading)
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _bfloat16_to_float32(raw_uint16):
    return (raw_uint16.astype(np.uint32) << 16).view(np.float32)


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Namespace:
    """Stand-in for argparse.Namespace objects that training scripts store next to the weights."""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    if not size:
        return storage[storage_offset].copy()
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_unused):
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("argparse", "Namespace"): _Namespace,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, path):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"{self.path}: refusing to load a pickled {module}.{name} (only tensors and plain containers "
            f"are read, no pickled code is executed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unsupported persistent record {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: storage {key} has an unknown type")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"{self.path}: storage data/{key} is missing (truncated file?)") from None
            if storage_type.dtype == "bfloat16":
                self.storages[key] = _bfloat16_to_float32(np.frombuffer(raw, dtype="<u2"))
            else:
                self.storages[key] = np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))
        return self.storages[key]


def load_torch_file(path):
    """Read a `torch.save` zip archive into nested dicts of numpy arrays, executing no pickled code."""
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a zip-format torch checkpoint (truncated, or the legacy pre-1.6 format: "
            f"re-save it with torch.save(..., _use_new_zipfile_serialization=True))") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        try:
            with archive.open(pickles[0]) as handle:
                return _RestrictedUnpickler(handle, archive, prefix, path).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: corrupt checkpoint ({err})") from None


def load_safetensors_file(path):
    """Read a .safetensors file into a dict of numpy arrays (bfloat16 widened to float32)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        header_len = struct.unpack("<Q", head)[0]
        if header_len > size - 8:
            raise CheckpointError(f"{path}: header length {header_len} exceeds the file size (truncated?)")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError as err:
            raise CheckpointError(f"{path}: unreadable safetensors header ({err})") from None
        data = np.memmap(handle, dtype=np.uint8, mode="r", offset=8 + header_len) if size > 8 + header_len \
            else np.zeros(0, np.uint8)
        tensors = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES.get(spec.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {spec.get('dtype')}")
            start, stop = spec["data_offsets"]
            if stop > data.size:
                raise CheckpointError(f"{path}: tensor {name} lies past the end of the file (truncated?)")
            raw = np.asarray(data[start:stop])
            if dtype == "bfloat16":
                array = _bfloat16_to_float32(raw.view("<u2"))
            else:
                array = raw.view(np.dtype(dtype).newbyteorder("<"))
            tensors[name] = array.reshape(spec["shape"]).copy()
        return tensors


def read_state_dict(path):
    """The model weights in a checkpoint file as {name: numpy array}.

    Accepts a plain state dict or a training checkpoint dict, preferring "ema" over "model"
    (the official Latte checkpoints keep EMA weights under "ema"); strips DDP's "module." prefix.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        state = load_safetensors_file(path)
    elif path.endswith(".ckpt"):
        import mindspore as ms
        try:
            state = {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items()}
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: unreadable MindSpore checkpoint ({err})") from None
    else:
        state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    for key in ("ema", "model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    weights = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        weights[name[len("module."):] if name.startswith("module.") else name] = value
    if not weights:
        raise CheckpointError(f"{path}: holds no tensors")
    return weights


def match_state_dict(params, state, source, recompute=()):
    """Check `state` against the model's parameters {name: Parameter}; returns {name: float32 array}.

    Names in `recompute` (the fixed sin-cos tables) may differ in shape: the model keeps its own.
    Raises CheckpointError listing every missing, unexpected and mis-shaped key by name.
    """
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    misshaped = []
    matched = {}
    for name, param in params.items():
        if name not in state:
            continue
        array = state[name]
        if tuple(array.shape) != tuple(param.shape):
            if name in recompute:
                logger.info("%s: %s has shape %s, the model recomputes it as %s",
                            source, name, tuple(array.shape), tuple(param.shape))
                continue
            misshaped.append(f"{name} {tuple(array.shape)} != model {tuple(param.shape)}")
            continue
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            misshaped.append(f"{name} holds NaN or inf")
            continue
        matched[name] = array.astype(np.float32)
    if missing or unexpected or misshaped:
        problems = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong", misshaped)):
            if names:
                problems.append(f"{label} ({len(names)}): " + ", ".join(names[:12]) + (" ..." if len(names) > 12 else ""))
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    return matched


def load_weights(model, path, recompute=(), transform=None):
    """Load a checkpoint file of any supported format into `model` (strict: every parameter).
    `transform` maps the file's names onto the model's (e.g. an older layout)."""
    import mindspore as ms
    params = {p.name: p for p in model.get_parameters()}
    state = read_state_dict(path)
    if transform is not None:
        state = transform(state)
    matched = match_state_dict(params, state, os.fspath(path), recompute)
    for name, array in matched.items():
        params[name].set_data(ms.Tensor(array, params[name].dtype))
    return model


def save_weights(params, target, append_dict=None):
    """Write {name: array} atomically as a MindSpore .ckpt or .safetensors file."""
    import mindspore as ms
    target = os.fspath(target)
    if target.endswith(".safetensors"):
        fmt, suffix = "safetensors", ".safetensors"
    elif target.endswith(".ckpt"):
        fmt, suffix = "ckpt", ".ckpt"
    else:
        raise CheckpointError(f"{target}: the target must end in .ckpt or .safetensors")
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], tmp,
                           append_dict=append_dict, format=fmt)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
