"""The cache's bytes do not depend on the runner: the contract is bit-identical latents on one machine
for any --workers (and so for any resume point, since each shard is encoded whole by one runner), and a
small measured bound across CPU types.

The kernels' products run oneDNN's sgemm by default and numpy's OpenBLAS with LATTE_GEMM=openblas (also
the fallback where MindSpore has no oneDNN). OpenBLAS rounds differently with 1 and 2 threads on its
Haswell kernels, the ones every AVX2-only x86 CPU runs; OPENBLAS_CORETYPE=Haswell selects them on any
x86 machine with AVX2, so the OpenBLAS case reproduces an AVX2-only machine on an AVX-512 one too."""
import os
import subprocess
import sys

import numpy as np
import pytest

from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.pipelines.ingest import run_ingest

from media import moving_square_frames, write_mp4

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    for i in range(3):
        write_mp4(root / "src" / f"clip_{i}.mp4", moving_square_frames(12 + 4 * i, height=40, width=56, seed=i))
    run_ingest([root / "src"], root / "ingest", workers=0, progress=False)
    return root / "ingest"


def _cache_in_subprocess(manifest, vae, out, workers, **env):
    command = [LATTE, "cache", "--manifest", str(manifest), "--vae", str(vae), "--out", str(out), "--image-size", "32",
               "--dtype", "float32", "--workers", str(workers), "--shard-videos", "1", "--micro-batch", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    cache = open_cache(out)
    return {video_id: np.asarray(cache.read(video_id)["mean"]) for video_id in cache.ids}


@pytest.mark.slow
@pytest.mark.parametrize("gemm", [{"LATTE_GEMM": "onednn"}, {"LATTE_GEMM": "openblas", "OPENBLAS_CORETYPE": "Haswell"}],
                         ids=["onednn", "openblas-avx2"])
def test_the_cache_is_bit_identical_for_every_runner(manifest, fixtures_dir, tmp_path, gemm):
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    in_process = _cache_in_subprocess(manifest, vae, tmp_path / "w0", 0, **gemm)
    two_workers = _cache_in_subprocess(manifest, vae, tmp_path / "w2", 2, **gemm)
    assert sorted(in_process) == sorted(two_workers) == ["clip_0.mp4", "clip_1.mp4", "clip_2.mp4"]
    for video_id in in_process:
        np.testing.assert_array_equal(in_process[video_id], two_workers[video_id])


@pytest.mark.slow
def test_across_blas_kernels_latents_differ_by_float32_rounding_only(manifest, fixtures_dir, tmp_path):
    """Another CPU type runs other sgemm kernels (other blocking, FMA order): the latents may differ,
    by float32 rounding only. Here oneDNN's kernels for this CPU against OpenBLAS's AVX2 ones. Measured
    over these clips: at most a few ulp of the latents' scale (max |Δ| / max |mean| ≈ 1e-7); the bound of
    1e-5 leaves room for deeper VAEs, whose rounding grows with depth, while any real error (a wrong
    frame, channel or kernel) is > 1e-2."""
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    haswell = _cache_in_subprocess(manifest, vae, tmp_path / "haswell", 0, LATTE_GEMM="openblas",
                                   OPENBLAS_CORETYPE="Haswell")
    native = _cache_in_subprocess(manifest, vae, tmp_path / "native", 0, LATTE_GEMM="onednn")
    for video_id in haswell:
        scale = np.abs(native[video_id]).max()
        assert np.abs(haswell[video_id] - native[video_id]).max() / scale < 1e-5
