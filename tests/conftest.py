import json
import os
import pathlib

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import mindspore as ms  # noqa: E402

from latte_core.runtime import prefer_avx2_onednn  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("LATTE_FIXTURES", ROOT.parent / "shared" / "fixtures"))

# Once per session, before any kernel runs (MindSpore refuses a device change after that).
prefer_avx2_onednn()
ms.set_device("CPU")


@pytest.fixture(autouse=True)
def graph_mode_on_cpu(tmp_path, monkeypatch):
    # MindSpore writes compile reports (rank_0/, rewritten_network/) into the working directory.
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


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


def relative_error(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
