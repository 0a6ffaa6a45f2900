import json
import os
import pathlib
import socket
import sys

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import mindspore as ms  # noqa: E402

from latte_core.runtime import prefer_avx2_onednn  # noqa: E402
from latte_toolkit.datasets.formats import FORMAT_NAMES  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("LATTE_FIXTURES", ROOT.parent / "shared" / "fixtures"))

# Once per session, before any kernel runs (MindSpore refuses a device change after that).
prefer_avx2_onednn()
ms.set_device("CPU")


def pytest_collection_modifyitems(items):
    """Modules holding slow tests run first, each module's tests together and in their order: with `-n 2`
    the workers then finish on short tests rather than one waiting for the other's last long one."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_modules)


@pytest.fixture(autouse=True)
def graph_mode_on_cpu(tmp_path, monkeypatch):
    # MindSpore writes compile reports (rank_0/, rewritten_network/) into the working directory.
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    # A library that switched this worker to a real-time policy (SVT-AV1 does, as root) would pass it to every
    # process started later, whose spinning MindSpore threads then starve a 2-core machine: a hung suite
    assert os.sched_getscheduler(0) == os.SCHED_OTHER, "this test left the worker on a real-time scheduling policy"


@pytest.fixture(params=["kernels-on", "kernels-off"])
def kernel_path(request):
    """Run a test with models built on latte_core's CPU kernels, and again on MindSpore's own ops."""
    from latte_core import kernels
    on = request.param == "kernels-on"
    previous = kernels.set_enabled(on)
    if on:
        assert kernels.enabled() and kernels.has_blas(), "the CPU kernels did not build on this machine"
    yield on
    kernels.set_enabled(previous)


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"reference fixtures not found at {FIXTURES}; set LATTE_FIXTURES")
    return FIXTURES


@pytest.fixture(scope="session")
def latte_fixture(fixtures_dir):
    folder = fixtures_dir / "latte"
    return {
        "config": json.loads((folder / "latte_class_small_config.json").read_text()),
        "pt": folder / "latte_class_small.pt",
        "safetensors": folder / "latte_class_small.safetensors",
        "io": dict(np.load(folder / "latte_class_small_io.npz")),
    }


BIN = os.path.dirname(sys.executable)  # the venv's console scripts: latte, msrun


def free_port():
    """A port nothing listens on: the suite runs on several processes, so a fixed msrun port could clash."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def all_batches(loader):
    """Every batch of a loader, as numpy arrays."""
    return [{key: np.array(value) for key, value in batch.items()} for batch in loader]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert sorted(a) == sorted(b)
        for key in a:  # latent, label, index (and label_image, caption embeddings)
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def relative_error(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def caches(tmp_path_factory, fixtures_dir):
    """Seven H.264 clips (9 to 27 frames) and a 5-frame folder (shorter than the tests' clips), cached
    in every format with the fixture VAE: 32 px frames, 8x8 latents, shards of 2 videos, chunks of 4."""
    from latte_toolkit.pipelines.cache import run_cache
    from latte_toolkit.pipelines.ingest import run_ingest
    from media import moving_square_frames, write_frame_folder, write_mp4
    root = tmp_path_factory.mktemp("loader")
    for i in range(7):
        write_mp4(root / "src" / f"clip_{i}.mp4", moving_square_frames(9 + 3 * i, height=40, width=56, seed=i))
    write_frame_folder(root / "src" / "sky" / "short", moving_square_frames(5, seed=7))
    run_ingest([root / "src"], root / "ingest", workers=0, progress=False)
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    out = {"root": root, "ingest": root / "ingest", "vae": vae}
    for fmt in FORMAT_NAMES:
        run_cache(root / "ingest", vae, root / fmt, fmt=fmt, image_size=32, workers=0, shard_videos=2,
                  chunk_frames=4, micro_batch=4, progress=False)
        out[fmt] = root / fmt
    run_cache(root / "ingest", vae, root / "float32", fmt="numpy", image_size=32, dtype="float32", workers=0,
              shard_videos=2, chunk_frames=4, micro_batch=4, progress=False)
    out["float32"] = root / "float32"
    return out
