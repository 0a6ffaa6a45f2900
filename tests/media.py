"""Media for tests: the package's procedural clips and frame folders, plus broken inputs and a small
random-weight VAE folder."""
import os

from latte_toolkit.datasets.video import write_frame_folder, write_mp4  # noqa: F401
from latte_toolkit.tools.synthetic import moving_square_frames  # noqa: F401


def truncate(path, keep_fraction=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: int(len(data) * keep_fraction)])
    return path


def write_vae_folder(folder, block_out_channels=(8, 8, 8, 8), groups=4, layers_per_block=1, seed=0):
    """A diffusers-format AutoencoderKL folder with random weights (8x downsampling by default)."""
    import mindspore as ms

    from latte_core import AutoencoderKL

    ms.set_seed(seed)
    config = {"block_out_channels": list(block_out_channels), "layers_per_block": layers_per_block,
              "norm_num_groups": groups, "latent_channels": 4}
    return AutoencoderKL.from_config(config).save_pretrained(folder)
