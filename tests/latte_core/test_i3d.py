"""The MindSpore I3D against the PyTorch reference (cd-fvd 0.1.1's InceptionI3d and preprocess_i3d) on the
random-weight fixture (fvd/README in the fixtures), and the weights file's checks."""
import numpy as np
import pytest
import mindspore as ms
from safetensors.numpy import save_file

from latte_core.checkpoint import CheckpointError, read_state_dict
from latte_core.i3d import load_i3d, preprocess_i3d


@pytest.fixture(scope="module")
def fvd_io(fixtures_dir):
    return dict(np.load(fixtures_dir / "fvd" / "fvd_io.npz"))


def test_preprocessing_matches_the_reference_resize(fvd_io):
    """Bilinear 64 -> 224, half-pixel centres, no antialiasing, [-1, 1]: the reference's float32 result to
    1e-5 (float32 rounding of two weighted sums of values up to 255, scaled by 2/255)."""
    ours = preprocess_i3d(fvd_io["real"][:1])
    assert ours.shape == fvd_io["preprocessed0"].shape == (1, 3, 16, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - fvd_io["preprocessed0"]).max() < 1e-5


def test_logits_match_the_reference_i3d(fixtures_dir, fvd_io):
    """A real (64 px) and a fake (48 px) video in one batch: max |ours - ref| / max |ref| below the fixture's
    1e-4 (float32 through 58 layers; measured 8.6e-6). Two of the sixteen videos keep the test ~10 s: the
    network is the same for every input."""
    model = load_i3d(fixtures_dir / "fvd" / "i3d_random_400.pt")
    batch = np.concatenate([preprocess_i3d(fvd_io["real"][:1]), preprocess_i3d(fvd_io["fake"][:1])])
    ours = model(ms.Tensor(batch)).asnumpy()
    reference = np.stack([fvd_io["real_logits"][0], fvd_io["fake_logits"][0]])
    assert ours.shape == (2, 400)
    assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-4


def test_a_file_that_is_not_the_i3d_is_refused_naming_its_keys(fixtures_dir, tmp_path):
    state = {name: value for name, value in read_state_dict(fixtures_dir / "fvd" / "i3d_random_400.pt").items()
             if not name.endswith("num_batches_tracked")}
    del state["Mixed_5c.b3b.bn.running_var"]
    state["logits.conv3d.weight"] = state["logits.conv3d.weight"].reshape(400, 1024)
    state["fc.weight"] = np.zeros((2, 2), np.float32)
    path = tmp_path / "not_i3d.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as caught:
        load_i3d(path)
    message = str(caught.value)
    for name in (str(path), "Mixed_5c.b3b.bn.running_var", "logits.conv3d.weight", "fc.weight"):
        assert name in message
