"""CPU kernels for the ops that MindSpore's CPU backend runs slowly in a Latte step and in the VAE.

Profiling a Latte-S/2 training step and an sd-vae-ft-mse encode on the project's 2-core machines showed
MindSpore's own matmul near the cores' peak, and the time lost elsewhere: GroupNorm
(~25% of a VAE encode), LayerNorm's backward, the ReduceSum of broadcast gradients (adaLN shift, scale
and gate) and of the gradient norm, bias gradients. `cpu_kernels.cc` holds fused float32 kernels for
these, each a MindSpore custom op (`ops.Custom(func_type="aot")`) with its backward (but conv2d):

    dense              y = x·wᵀ + b through an sgemm (below); backward dx, dw and db in one op
    norm_modulate      LayerNorm without affine, then the adaLN modulation x·(1 + scale) + shift
    gated_residual     x + gate·h, the adaLN-Zero residual
    gelu_tanh          the tanh-approximated GELU
    attention          multi-head softmax attention read straight from the fused qkv projection
    squared_sum        Σ x² over many tensors in one op (the gradient norm)
    group_norm         GroupNorm, optionally fused with the SiLU that follows it in every VAE resnet
    conv2d             the VAE's convolutions, inference only (no backward): Winograd F(2x2, 3x3) on
                       sgemm for 3x3 stride 1, one sgemm on the input itself for unpadded 1x1, sgemm on
                       im2col blocks otherwise (MindSpore's oneDNN convolutions are capped at AVX2 on
                       AVX-512 CPUs: runtime.py)

The library is compiled with g++ on first use (-O3 -march=native, or $LATTE_KERNEL_MARCH) into a cache folder
(`$LATTE_KERNEL_CACHE`, default ~/.cache/latte-toolkit/kernels) under a name that hashes the source,
the compiler, the CPU and the BLAS, and is reused afterwards.

The products (dense, attention, conv2d) call oneDNN's sgemm by default: the libdnnl MindSpore ships, as a
private copy in the same cache folder loaded with RTLD_DEEPBIND, so that it runs the CPU's widest
kernels while MindSpore's own oneDNN stays capped at AVX2 for its convolutions (runtime.py). On the
step's shapes it reached 109 GFLOP/s on one Zen 4 core against 94 for numpy's OpenBLAS (the core's FMA
peak: 114). LATTE_GEMM=openblas calls numpy's OpenBLAS instead (also the fallback, with a logged
reason, where MindSpore has no libdnnl or the copy cannot be made). The kernels are used only on CPU, only
for float32 tensors, and only when `enabled()`: set LATTE_CPU_KERNELS=0 (or call set_enabled(False)
before building a model) to use MindSpore's ops everywhere. If the library cannot be built, one
warning is logged and the models use MindSpore's ops. Cells decide when they are built, so switch
before constructing a model.
"""
import contextlib
import ctypes
import glob
import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from .errors import UserError

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
# (symbol, C type of its integer arguments) of the sgemm entry points numpy's OpenBLAS builds export
_SGEMM_SYMBOLS = (("cblas_sgemm64_", "int64_t"), ("scipy_cblas_sgemm64_", "int64_t"),
                  ("cblas_sgemm", "int"), ("scipy_cblas_sgemm", "int"))

GEMM_BACKENDS = ("onednn", "openblas")

_state = {"enabled": os.environ.get("LATTE_CPU_KERNELS", "1").lower() not in ("0", "false", "off", "no"),
          "library": None, "failed": False, "ops": {}}


def set_enabled(flag):
    """Use (True) or bypass (False) the kernels in models built from now on; returns the previous
    setting."""
    previous, _state["enabled"] = _state["enabled"], bool(flag)
    return previous


def enabled():
    """True when models built now should use the kernels: on CPU, not switched off, library built."""
    if not _state["enabled"] or ms.get_context("device_target") != "CPU":
        return False
    return library() is not None


def has_blas():
    """True when the library was linked to a BLAS, so that dense layers and attention go through it."""
    path = library()
    if path is None:
        return False
    if "has_blas" not in _state:
        _state["has_blas"] = bool(ctypes.CDLL(path).latte_has_blas())
    return _state["has_blas"]


def _thread_api(handle):
    """The (set, get) names of OpenBLAS's thread-count functions in a loaded BLAS, or None."""
    for prefix in ("", "scipy_"):
        for suffix in ("64_", ""):
            names = (f"{prefix}openblas_set_num_threads{suffix}", f"{prefix}openblas_get_num_threads{suffix}")
            if all(hasattr(handle, name) for name in names):
                return names
    return None


def find_blas():
    """(library path, sgemm symbol, integer type, thread-count (set, get) names or None) of numpy's bundled
    OpenBLAS, or None."""
    numpy_dir = os.path.dirname(os.path.abspath(np.__file__))
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(numpy_dir), "numpy.libs", "*openblas*.so*")))
    candidates += sorted(glob.glob(os.path.join(numpy_dir, ".libs", "*openblas*.so*")))
    for path in candidates:
        try:
            handle = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol, int_type in _SGEMM_SYMBOLS:
            if hasattr(handle, symbol):
                return path, symbol, int_type, _thread_api(handle)
    return None


@contextlib.contextmanager
def blas_threads(count):
    """Run the block with numpy's OpenBLAS (numpy's matmuls, and the kernels' sgemm with LATTE_GEMM=openblas)
    on `count` threads, then restore its previous count. OpenBLAS's sgemm rounds differently with 1 and 2 threads
    for the same operands on some CPUs (its Haswell kernels, i.e. every AVX2-only x86 machine: 5-20 % of
    the elements of a 256x64x64 product differ by one float32 ulp; on AVX-512 CPUs only products with a
    long K), so a job whose bytes must not depend on its runner pins the count. Does nothing where no
    OpenBLAS with a thread API is loaded."""
    blas = find_blas()
    if blas is None or blas[3] is None:
        yield
        return
    handle = ctypes.CDLL(blas[0])
    set_threads, get_threads = (getattr(handle, name) for name in blas[3])
    set_threads.argtypes, get_threads.restype = [ctypes.c_int], ctypes.c_int
    previous = get_threads()
    set_threads(count)
    try:
        yield
    finally:
        set_threads(previous)


def _cache_dir():
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "latte-toolkit", "kernels")
    return os.environ.get("LATTE_KERNEL_CACHE", default)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return ""


def _target_cpu():
    """g++'s -march: this CPU's (native) unless LATTE_KERNEL_MARCH names another, e.g. `haswell` to build
    and test the AVX2 code an AVX2-only machine runs on an AVX-512 one (any march but native also caps
    oneDNN's sgemm at AVX2; OPENBLAS_CORETYPE=Haswell does so for numpy's OpenBLAS)."""
    return os.environ.get("LATTE_KERNEL_MARCH", "native")


def find_onednn():
    """Path of the oneDNN library MindSpore ships (its CPU backend's), if it exports dnnl_sgemm, or None."""
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(ms.__file__)), "lib", "libdnnl.so*"))):
        try:
            if hasattr(ctypes.CDLL(path), "dnnl_sgemm"):
                return os.path.realpath(path)
        except OSError:
            continue
    return None


def gemm_backend():
    """The sgemm the kernels are asked to call: $LATTE_GEMM, `onednn` (default: MindSpore's oneDNN, at the
    CPU's widest ISA) or `openblas` (numpy's)."""
    choice = os.environ.get("LATTE_GEMM", "onednn").lower()
    if choice not in GEMM_BACKENDS:
        raise UserError(f"LATTE_GEMM must be one of {', '.join(GEMM_BACKENDS)}, not {choice!r}")
    return choice


def _private_onednn(folder):
    """A copy of MindSpore's libdnnl in the kernel cache (made once), or None without one. The kernels load
    the copy, not MindSpore's file: a second file is a second instance with its own ISA setting."""
    source = find_onednn()
    if source is None:
        return None
    stat = os.stat(source)
    key = hashlib.sha256(f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    path = os.path.join(folder, f"libdnnl-private-{key}.so")
    if not os.path.isfile(path):
        handle, staging = tempfile.mkstemp(prefix=".copying-", suffix=".so", dir=folder)
        os.close(handle)
        try:
            shutil.copyfile(source, staging)
            os.chmod(staging, 0o644)
            os.replace(staging, path)  # atomic, as the kernel library itself
        finally:
            if os.path.exists(staging):
                os.remove(staging)
    return path


def _use_onednn(path, folder):
    """Point the kernel library's sgemm at a private oneDNN when $LATTE_GEMM asks for it; the backend in use."""
    if gemm_backend() != "onednn":
        return "openblas"
    try:
        onednn = _private_onednn(folder)
    except OSError as err:  # a full or read-only cache: the kernels still run, on OpenBLAS
        logger.warning("could not copy MindSpore's oneDNN into %s (%s); the kernels use numpy's OpenBLAS", folder, err)
        return "openblas"
    if onednn is None:
        logger.info("MindSpore ships no oneDNN with dnnl_sgemm here; the kernels use numpy's OpenBLAS")
        return "openblas"
    # oneDNN's ISA codes: 0 the CPU's best; 0x7 AVX2, the code of an AVX2-only machine (LATTE_KERNEL_MARCH)
    max_isa = 0 if _target_cpu() == "native" else 0x7
    status = ctypes.CDLL(path).latte_use_onednn(onednn.encode(), max_isa)
    if status != 0:
        logger.warning("oneDNN's sgemm did not load from %s (status %d); the kernels use numpy's OpenBLAS", onednn, status)
        return "openblas"
    return "onednn"


def gemm_in_use():
    """`onednn` or `openblas`: the sgemm the kernels call in this process, or None without the kernels
    or a BLAS."""
    return _state.get("gemm") if library() else None


def _build_command(output, blas):
    # -fno-trapping-math: without it g++ leaves fast_exp's clamps and float-to-int conversion unvectorised
    # for AVX2 targets (AVX-512's masked instructions hide it): the GELU ran 8.6x slower on an AVX2 build
    command = ["g++", "-O3", f"-march={_target_cpu()}", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
               "-std=c++17", "-shared", "-fPIC", "-pthread", "-o", output, SOURCE]
    if blas:
        path, symbol, int_type, thread_api = blas
        # DT_RPATH (not RUNPATH) so that the BLAS finds its own neighbours (libgfortran) in numpy.libs
        command += [f"-DLATTE_SGEMM={symbol}", f"-DLATTE_BLAS_INT={int_type}", path,
                    f"-Wl,--disable-new-dtags,-rpath,{os.path.dirname(path)}"]
        if thread_api:
            command += [f"-DLATTE_BLAS_SET_THREADS={thread_api[0]}", f"-DLATTE_BLAS_GET_THREADS={thread_api[1]}"]
    return command


def library():
    """Path of the built kernel library (building it if needed), or None when it cannot be built."""
    if _state["library"] or _state["failed"]:
        return _state["library"]
    try:
        with open(SOURCE, "rb") as handle:
            source = handle.read()
        blas = find_blas()
        compiler = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True).stdout
        flags = " ".join(_build_command("", blas))  # the BLAS, the target CPU and the compiler flags
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), _cpu_flags().encode(), flags.encode(),
                                         sysconfig.get_platform().encode()])).hexdigest()[:16]
        folder = _cache_dir()
        path = os.path.join(folder, f"latte_cpu_kernels-{key}.so")
        if not os.path.isfile(path):
            os.makedirs(folder, exist_ok=True)
            handle, staging = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=folder)
            os.close(handle)
            try:
                result = subprocess.run(_build_command(staging, blas), capture_output=True, text=True)
                if result.returncode:
                    raise RuntimeError(f"g++ failed: {result.stderr.strip()[-2000:]}")
                os.replace(staging, path)  # atomic: concurrent builders (msrun ranks) all end with one file
            finally:
                if os.path.exists(staging):
                    os.remove(staging)
            logger.info("built the CPU kernels: %s%s", path, "" if blas else " (no BLAS found: dense layers "
                        "keep MindSpore's matmul)")
        ctypes.CDLL(path)  # fail here, not inside a graph, if it does not load
        _state["gemm"] = _use_onednn(path, folder) if blas else None
        _state["library"] = path
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _state["failed"] = True
        logger.warning("CPU kernels unavailable, using MindSpore's ops instead (%s)", err)
    return _state["library"]


def stats():
    """{kernel: {"calls", "seconds", "flops"}} accumulated in this process since the last reset (the
    flops are those of the BLAS calls of the dense kernels)."""
    path = library()
    if path is None:
        return {}
    lib = ctypes.CDLL(path)
    name, calls, nanoseconds, flops = ctypes.c_char_p(), ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    result, i = {}, 0
    while lib.latte_kernel_stats(i, ctypes.byref(name), ctypes.byref(calls), ctypes.byref(nanoseconds),
                                 ctypes.byref(flops)) == 0:
        entry = result.setdefault(name.value.decode(), {"calls": 0, "seconds": 0.0, "flops": 0})
        entry["calls"] += calls.value
        entry["seconds"] += nanoseconds.value / 1e9
        entry["flops"] += flops.value
        i += 1
    return result


def gemm_shapes():
    """The distinct sgemm problems of the dense kernels since the last reset: dicts of m, n, k,
    trans_a, trans_b (row-major c (m, n) = op(a)·op(b)) and calls."""
    path = library()
    if path is None or not has_blas():
        return []
    lib = ctypes.CDLL(path)
    m, n, k, calls = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    trans_a, trans_b = ctypes.c_int(), ctypes.c_int()
    shapes, i = [], 0
    while lib.latte_gemm_shape(i, *(ctypes.byref(v) for v in (m, n, k, trans_a, trans_b, calls))) == 0:
        shapes.append({"m": m.value, "n": n.value, "k": k.value, "trans_a": bool(trans_a.value),
                       "trans_b": bool(trans_b.value), "calls": calls.value})
        i += 1
    return shapes


def reset_stats():
    path = library()
    if path is not None:
        ctypes.CDLL(path).latte_kernel_stats_reset()


#################################################################################
#                     Custom ops and their backward passes                       #
#################################################################################

def _aot(name, out_shape, out_dtype, bprop=None):
    return ops.Custom(f"{library()}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot",
                      bprop=bprop)


def _same_dtype(*dtypes):
    return dtypes[0]


def _cached(build):
    """One instance of each custom op per process, created on first use."""
    def get():
        if build.__name__ not in _state["ops"]:
            _state["ops"][build.__name__] = build()
        return _state["ops"][build.__name__]
    get.__name__ = build.__name__
    get.__doc__ = build.__doc__
    return get


@_cached
def dense_op():
    """(x (..., K), weight (N, K), bias (N)) -> x·weightᵀ + bias."""
    backward = _aot("latte_dense_backward", lambda dy, x, w: (x, w, [w[0]]),
                    lambda dy, x, w: (x, x, x))

    def bprop(x, weight, bias, out, dout):
        return backward(dout, x, weight)

    return _aot("latte_dense_forward", lambda x, w, b: list(x[:-1]) + [w[0]], _same_dtype, bprop)


@_cached
def norm_modulate_op():
    """(x (N, T, D), shift (G, D), scale (G, D), eps (1)) -> (LN(x)·(1 + scale) + shift, stats (N, T, 2));
    G divides N, row i of x takes modulation row i // (N / G)."""
    backward = _aot("latte_norm_modulate_backward", lambda dy, x, scale, stats: (x, scale, scale),
                    lambda dy, x, scale, stats: (x, x, x))

    def bprop(x, shift, scale, eps, out, dout):
        dx, dshift, dscale = backward(dout[0], x, scale, out[1])
        return dx, dshift, dscale, ops.zeros_like(eps)

    return _aot("latte_norm_modulate_forward", lambda x, sh, sc, eps: (x, [x[0], x[1], 2]),
                lambda x, sh, sc, eps: (x, x), bprop)


@_cached
def gated_residual_op():
    """(x (N, T, D), gate (G, D), h (N, T, D)) -> x + gate·h, G dividing N as for norm_modulate_op."""
    backward = _aot("latte_gated_residual_backward", lambda dy, gate, h: (gate, h),
                    lambda dy, gate, h: (gate, h))

    def bprop(x, gate, h, out, dout):
        dgate, dh = backward(dout, gate, h)
        return dout, dgate, dh

    return _aot("latte_gated_residual_forward", lambda x, gate, h: x, _same_dtype, bprop)


@_cached
def gelu_tanh_op():
    """x -> tanh-approximated GELU of x."""
    backward = _aot("latte_gelu_tanh_backward", lambda dy, x: x, _same_dtype)

    def bprop(x, out, dout):
        return (backward(dout, x),)

    return _aot("latte_gelu_tanh_forward", lambda x: x, _same_dtype, bprop)


@_cached
def attention_op():
    """(qkv (B, N, 3C), heads (H)) -> (softmax attention output (B, N, C), logsumexp (B, H, N)); `heads`
    is a placeholder whose length is the head count. qkv (B, N, P, 3C) attends over the N axis for each of
    the P positions: output (B, N, P, C), logsumexp (B, P, H, N)."""
    backward = _aot("latte_attention_backward", lambda dy, qkv, out, lse: qkv, _same_dtype)

    def bprop(qkv, heads, out, dout):
        return backward(dout[0], qkv, out[0], out[1]), ops.zeros_like(heads)

    return _aot("latte_attention_forward",
                lambda qkv, heads: (list(qkv[:-1]) + [qkv[-1] // 3], [qkv[0]] + list(qkv[2:-1]) + [heads[0], qkv[1]]),
                lambda qkv, heads: (qkv, qkv), bprop)


@_cached
def squared_sum_op():
    """(x_1, ..., x_k) -> (1,) tensor holding Σ_i Σ x_i² (no backward: used on gradients)."""
    return _aot("latte_squared_sum", lambda *shapes: [1], _same_dtype)


def _group_norm_op(silu):
    suffix = "_silu" if silu else ""
    backward = _aot(f"latte_group_norm{suffix}_backward", lambda dy, x, g, b, stats: (x, g, b),
                    lambda dy, x, g, b, stats: (x, x, x))

    def bprop(x, gamma, beta, eps, groups, out, dout):
        dx, dgamma, dbeta = backward(dout[0], x, gamma, beta, out[1])
        return dx, dgamma, dbeta, ops.zeros_like(eps), ops.zeros_like(groups)

    # `groups` is a (G,) placeholder whose length tells the kernel the group count (via the stats shape)
    return _aot(f"latte_group_norm{suffix}_forward", lambda x, g, b, eps, groups: (x, [x[0], groups[0], 2]),
                lambda x, g, b, eps, groups: (x, x), bprop)


@_cached
def group_norm_op():
    """(x (N, C, ...), gamma (C), beta (C), eps (1), groups (G)) -> (GroupNorm(x), stats (N, G, 2))."""
    return _group_norm_op(silu=False)


@_cached
def group_norm_silu_op():
    """As group_norm_op, with SiLU applied to the normalised output."""
    return _group_norm_op(silu=True)


def conv2d_op(stride, pads):
    """(x (N, C, H, W), weight (O, C, kh, kw), bias (O), geometry (5)) -> the convolution, for inference
    (no backward). `geometry` holds (stride, pad top, bottom, left, right) for the kernel; the same
    values, given here, shape the output."""
    key = ("conv2d", stride, tuple(pads))
    if key not in _state["ops"]:
        top, bottom, left, right = pads

        def out_shape(x, w, b, geometry):
            return [x[0], w[0], (x[2] + top + bottom - w[2]) // stride + 1, (x[3] + left + right - w[3]) // stride + 1]

        _state["ops"][key] = _aot("latte_conv2d_forward", out_shape, lambda x, w, b, geometry: x)
    return _state["ops"][key]


def scalar_input(value):
    """A (1,) float32 tensor for a kernel's constant input (eps)."""
    return Tensor(np.array([value], np.float32))
