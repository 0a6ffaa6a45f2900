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
import zipfile
import zlib

import mindspore as ms
import numpy as np

from .atomic import staged
from .errors import UserError, is_integer

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


class _Storage:
    """One storage record of a torch zip: its key (data/<key>) and its values."""

    def __init__(self, key, values):
        self.key = key
        self.values = values


class _BadTensor:
    """A tensor whose size/stride do not fit its storage; reported with its name after unpickling."""

    def __init__(self, problem):
        self.problem = problem


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    if not isinstance(storage, _Storage):
        return _BadTensor(f"its storage is a {type(storage).__name__}, not a storage record")
    values = storage.values
    size, stride = tuple(size), tuple(stride)
    if not is_integer(storage_offset) or storage_offset < 0:
        return _BadTensor(f"storage offset {storage_offset!r} is not a non-negative integer")
    if len(size) != len(stride) or not all(is_integer(n) and n >= 0 for n in size + stride):
        return _BadTensor(f"size {list(size)} / stride {list(stride)} are not non-negative integers of one length")
    # the largest element index the tensor reads, plus one (an empty tensor reads nothing)
    needed = 0 if 0 in size else storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > values.size:
        return _BadTensor(f"size {list(size)}, stride {list(stride)} and offset {storage_offset} need {needed} "
                          f"elements, storage data/{storage.key} holds {values.size} (truncated or corrupt file)")
    if not size:
        return np.array(values[storage_offset])  # a 0-d tensor (e.g. CLIP's logit_scale) stays an array
    itemsize = values.itemsize
    view = np.lib.stride_tricks.as_strided(
        values[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _bad_tensors(value, prefix=""):
    """(name, problem) of every _BadTensor in the unpickled containers."""
    if isinstance(value, _BadTensor):
        yield prefix or "<root>", value.problem
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _bad_tensors(item, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _bad_tensors(item, f"{prefix}/{index}" if prefix else str(index))
    elif isinstance(value, _Namespace):
        yield from _bad_tensors(value.__dict__, prefix)


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
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unsupported persistent record {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: storage data/{key} has an unknown type")
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(name)
            except KeyError:
                raise CheckpointError(f"{self.path}: storage record data/{key} is missing from the archive "
                                      f"(truncated or damaged file?)") from None
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as err:
                raise CheckpointError(f"{self.path}: storage record data/{key} is unreadable ({err})") from None
            itemsize = 2 if storage_type.dtype == "bfloat16" else np.dtype(storage_type.dtype).itemsize
            count = len(raw) // itemsize
            numel = pid[4] if len(pid) >= 5 else None
            if len(raw) % itemsize or (is_integer(numel) and count < numel):
                expected = f"{numel} {storage_type.name} values" if is_integer(numel) else f"whole {itemsize}-byte values"
                raise CheckpointError(f"{self.path}: storage record data/{key} holds {len(raw)} bytes, the "
                                      f"checkpoint expects {expected} (truncated or damaged file?)")
            if storage_type.dtype == "bfloat16":
                values = _bfloat16_to_float32(np.frombuffer(raw, dtype="<u2"))
            else:
                values = np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))
            self.storages[key] = _Storage(key, values)
        return self.storages[key]


_TORCH_READ_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
                      struct.error, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                      NotImplementedError, RecursionError, MemoryError)


def load_torch_file(path):
    """Read a `torch.save` zip archive into nested dicts of numpy arrays, executing no pickled code.
    Any damage (a truncated archive, a missing or short storage record, a tensor that reads past its
    storage) is a CheckpointError naming the file (and the tensor, where one is to blame)."""
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error) as err:
        raise CheckpointError(
            f"{path}: not a readable zip-format torch checkpoint ({err}: truncated or damaged, or the legacy "
            f"pre-1.6 format: re-save it with torch.save(..., _use_new_zipfile_serialization=True))") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file ({err.strerror or err})") from None
    with archive:
        try:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = f"{prefix}byteorder"
            if byteorder in names and archive.read(byteorder).strip() != b"little":
                raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
            with archive.open(pickles[0]) as handle:
                state = _RestrictedUnpickler(handle, archive, prefix, path).load()
        except CheckpointError:
            raise
        except _TORCH_READ_ERRORS as err:
            raise CheckpointError(f"{path}: corrupt checkpoint ({type(err).__name__}: {err})") from None
    bad = list(_bad_tensors(state))
    if bad:
        listed = "; ".join(f"tensor {name}: {problem}" for name, problem in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path}: {listed}{more}")
    return state


# the safetensors format's own bound on the JSON header (its reference reader refuses larger ones)
MAX_SAFETENSORS_HEADER = 100_000_000


def _safetensors_layout(path, header, data_size):
    """{name: (numpy dtype | "bfloat16", shape, start, stop)} after checking every entry of the header:
    known dtype, a shape of non-negative integers, offsets within the data whose length is exactly the
    shape's bytes, and no two tensors sharing bytes."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    layout = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise CheckpointError(f"{path}: tensor {name}: header entry is not an object ({spec!r:.60})")
        dtype_name = spec.get("dtype")
        dtype = _SAFETENSORS_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype_name!r}")
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if not isinstance(shape, list) or not all(is_integer(n) and n >= 0 for n in shape):
            raise CheckpointError(f"{path}: tensor {name} has an invalid shape {shape!r:.80} "
                                  f"(expected a list of non-negative integers)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_integer(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name} has invalid data_offsets {offsets!r:.80} "
                                  f"(expected [start, stop] with 0 <= start <= stop)")
        start, stop = offsets
        if stop > data_size:
            raise CheckpointError(f"{path}: tensor {name} lies past the end of the file (its data ends at byte "
                                  f"{stop} of a {data_size}-byte data section: truncated?)")
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        nbytes = int(np.prod(shape, dtype=object)) * itemsize if shape else itemsize
        if stop - start != nbytes:
            raise CheckpointError(f"{path}: tensor {name} has shape {shape} ({dtype_name}, {nbytes} bytes) but "
                                  f"its data_offsets [{start}, {stop}] span {stop - start} bytes")
        layout[name] = (dtype, shape, start, stop)
    previous = None
    for name, (_, _, start, stop) in sorted(layout.items(), key=lambda item: item[1][2:]):
        if start == stop:
            continue
        if previous is not None and start < previous[1]:
            raise CheckpointError(f"{path}: tensors {previous[0]} and {name} overlap (bytes {start} to "
                                  f"{min(stop, previous[1])} belong to both): a damaged header")
        previous = (name, stop)
    return layout


def load_safetensors_file(path):
    """Read a .safetensors file into a dict of numpy arrays (bfloat16 widened to float32). A damaged
    header (absurd length, not JSON, bad shapes or offsets) or a truncated file is a CheckpointError
    naming the file and the tensor."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        handle = open(path, "rb")
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file ({err.strerror or err})") from None
    with handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
        header_len = struct.unpack("<Q", head)[0]
        if header_len > MAX_SAFETENSORS_HEADER:
            raise CheckpointError(f"{path}: header length {header_len} is absurd (over {MAX_SAFETENSORS_HEADER} "
                                  f"bytes): not a safetensors file, or its first bytes are damaged")
        if header_len > size - 8:
            raise CheckpointError(f"{path}: header length {header_len} exceeds the file size {size} (truncated?)")
        try:
            header = json.loads(handle.read(header_len))
        except (ValueError, RecursionError) as err:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({err}): damaged file") from None
        data_size = size - 8 - header_len
        layout = _safetensors_layout(path, header, data_size)
        data = np.memmap(handle, dtype=np.uint8, mode="r", offset=8 + header_len) if data_size \
            else np.zeros(0, np.uint8)
        tensors = {}
        for name, (dtype, shape, start, stop) in layout.items():
            raw = np.asarray(data[start:stop])
            if dtype == "bfloat16":
                array = _bfloat16_to_float32(raw.view("<u2"))
            else:
                array = raw.view(np.dtype(dtype).newbyteorder("<"))
            tensors[name] = array.reshape(shape).copy()
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
    """Check `state` against the model's parameters {name: Parameter}; returns {name: float32 array}
    (the state's own arrays where they are float32 already: no copy).

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
        matched[name] = np.asarray(array).astype(np.float32, copy=False)
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
    state = read_state_dict(path)
    if transform is not None:
        state = transform(state)
    return set_weights(model, state, os.fspath(path), recompute)


def set_weights(model, state, source, recompute=()):
    """Set every parameter of `model` from `state` {name: array}, checked by match_state_dict (`source`
    names the weights in its errors)."""
    params = {p.name: p for p in model.get_parameters()}
    for name, array in match_state_dict(params, state, source, recompute).items():
        params[name].set_data(ms.Tensor(array, params[name].dtype))
    return model


def save_weights(params, target, append_dict=None):
    """Write {name: array} atomically as a MindSpore .ckpt or .safetensors file."""
    target = os.fspath(target)
    if target.endswith(".safetensors"):
        fmt = "safetensors"
    elif target.endswith(".ckpt"):
        fmt = "ckpt"
    else:
        raise CheckpointError(f"{target}: the target must end in .ckpt or .safetensors")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with staged(target) as tmp:  # the staging name ends in the target's name, so in its suffix
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], tmp,
                           append_dict=append_dict, format=fmt)
    return target
