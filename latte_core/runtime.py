"""CPU kernel selection for MindSpore's oneDNN kernels.

On CPUs with AVX-512 (seen on AMD EPYC machines) oneDNN's AVX-512 convolution path runs ~100x
slower than its AVX2 path (a 3x3 conv on 4x128x64x64: 4.6 s vs 0.03 s, measured), while matmul
speed is unchanged. oneDNN reads its ISA cap lazily, at the first kernel it creates, so setting
ONEDNN_MAX_CPU_ISA before the first convolution is enough. A value set by the user is kept.
"""
import logging
import os
import platform

from mindspore.communication import get_group_size, get_rank, init

logger = logging.getLogger(__name__)

_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _cpu_has_avx512():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def prefer_avx2_onednn():
    """Cap oneDNN at AVX2 on AVX-512 x86 CPUs unless the user chose an ISA; returns the cap in force."""
    for name in _ISA_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    if platform.machine() in ("x86_64", "AMD64") and _cpu_has_avx512():
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        logger.debug("capping oneDNN at AVX2: its AVX-512 convolutions are ~100x slower on this CPU "
                    "(set ONEDNN_MAX_CPU_ISA to override)")
        return "AVX2"
    return None


def join_msrun(error, remedy):
    """(rank, world size) of this process in the msrun job it was started by. Started otherwise:
    `error` (a UserError subclass) with the reason and `remedy`."""
    try:
        init()
    except RuntimeError as err:
        raise error(f"use_parallel: cannot join a distributed job ({str(err).splitlines()[0]}); {remedy}") from None
    return get_rank(), get_group_size()
