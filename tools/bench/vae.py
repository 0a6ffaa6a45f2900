"""`latte bench vae`: frames/s of the VAE encoder and decoder at sd-vae-ft-mse's shape, per kernel path,
and the encoder's convolution rate against numpy's sgemm on the same im2col products."""
import statistics
import time

import mindspore as ms
import numpy as np
from mindspore import nn

from latte_core import AutoencoderKL, kernels

from .measure import KERNEL_PATHS, combine_paths, median_matmul_seconds, peak_rss_mb, run_in_fresh_process, setup_child

# numpy times at most this many im2col columns of a product and scales to the rest: sgemm's rate is flat
# in N well before it, and a 256² layer's whole im2col matrix would take ~1 GB
FLOOR_COLUMNS = 16384


def encoder_conv_gemms(vae, batch, size):
    """The im2col product of every encoder convolution (quant_conv included) on `batch` frames of size²,
    in order: dicts m (output channels), n (batch · output pixels), k (input channels · kh · kw)."""
    convs = [cell for _, cell in vae.encoder.cells_and_names() if isinstance(cell, nn.Conv2d)]
    if vae.use_quant_conv:
        convs.append(vae.quant_conv)
    gemms = []
    for conv in convs:  # cells_and_names lists them in the order they run; only strides change the size
        (kh, kw), stride = conv.kernel_size, conv.stride[0]
        top, bottom, left, right = (conv.padding,) * 4 if isinstance(conv.padding, int) else conv.padding
        height = (size + top + bottom - kh) // stride + 1
        assert height == (size + left + right - kw) // stride + 1, "square frames give square layers"
        gemms.append(dict(m=conv.out_channels, n=batch * height * height, k=conv.in_channels * kh * kw))
        size = height
    return gemms


def _numpy_gemm_seconds(m, n, k, repeats=3):
    columns = min(n, FLOOR_COLUMNS)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, columns), dtype=np.float32)
    return median_matmul_seconds(a, b, repeats) * n / columns


def _timed(call, repeats, before_timed=lambda: None):
    """(the first, compiling call's seconds and result, the median seconds of `repeats` more);
    before_timed runs between them."""
    start = time.perf_counter()
    result = call()
    first = time.perf_counter() - start
    before_timed()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first, result, statistics.median(times)


def _vae_path(size, batch, repeats, dtype, seed, device, kernels_on, queue):
    active = setup_child(device, kernels_on)

    ms.set_seed(seed)
    vae = AutoencoderKL()  # our defaults are sd-vae-ft-mse's architecture
    vae.set_compute_dtype(getattr(ms, dtype))
    frames = ms.Tensor(np.random.default_rng(seed).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32))
    first_encode, latents, encode = _timed(lambda: vae.encode(frames).mean.asnumpy(), repeats,
                                           kernels.reset_stats if active else lambda: None)
    encode_stats = kernels.stats() if active else {}
    first_decode, _, decode = _timed(lambda: vae.decode(ms.Tensor(latents)).asnumpy(), repeats)
    gemms = encoder_conv_gemms(vae, batch, size)
    flops = sum(2 * g["m"] * g["n"] * g["k"] for g in gemms)
    figures = {"kernels": "on" if active else "off", "first_call_s": round(first_encode, 3),
               "median_call_s": round(encode, 6), "encode_frames_per_s": round(batch / encode, 4),
               "first_decode_s": round(first_decode, 3), "median_decode_s": round(decode, 6),
               "decode_frames_per_s": round(batch / decode, 4),
               "encode_conv_gflops": round(flops / encode / 1e9, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if active:
        figures["gemm"] = kernels.gemm_in_use()
        figures["kernel_ms_per_encode"] = {name: round(1000 * entry["seconds"] / repeats, 1)
                                           for name, entry in encode_stats.items() if entry["calls"]}
        numpy_seconds = sum(_numpy_gemm_seconds(g["m"], g["n"], g["k"]) for g in gemms)
        figures["conv_floor"] = {"gflop": round(flops / 1e9, 1), "convolutions": len(gemms),
                                 "numpy_seconds_same_gemms": round(numpy_seconds, 3),
                                 "numpy_gflops": round(flops / numpy_seconds / 1e9, 1),
                                 "encode_to_numpy_floor": round(numpy_seconds / encode, 3)}
    queue.put(figures)


def bench_vae(size=256, batch=4, repeats=3, dtype="float32", seed=0, device="CPU", kernels=KERNEL_PATHS):
    """Frames per second of AutoencoderKL.encode (posterior moments) and decode with sd-vae-ft-mse's
    shape (random weights), for each kernel path, each in a fresh process. With the kernels on, the
    encoder's convolutions (2·M·N·K of each im2col product, ~98 % of its multiply-adds) per second of
    encode, against numpy's sgemm on the same products in the same process (encode_to_numpy_floor:
    numpy's seconds for the products alone over the encode's)."""
    paths = [run_in_fresh_process(_vae_path, (size, batch, repeats, dtype, seed, device, path == "on"),
                                  f"vae (kernels {path})") for path in kernels]
    result = {"bench": "vae", "size": size, "batch": batch, "dtype": dtype, "device": device}
    return combine_paths(result, paths, "median_call_s")
