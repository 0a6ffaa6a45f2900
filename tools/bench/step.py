"""`latte bench step`: the compiled training step (forward, diffusion loss, backward, AdamW) per kernel
path, each in a fresh process."""
import statistics
import time

import mindspore as ms
import numpy as np

from latte_core import create_latte, kernels
from latte_core.diffusion import create_diffusion
from latte_core.latte import LATTE_MODELS
from latte_toolkit.train.step import DiffusionLoss, TrainStep, Updater

from .measure import KERNEL_PATHS, combine_paths, kernel_figures, peak_rss_mb, run_in_fresh_process, setup_child


def _step_path(model_name, frames, latent, batch, steps, flash_attention, seed, device, kernels_on, images, depth,
               queue):
    """Child process: time `steps` training steps with the kernels on or off; put the figures on queue."""
    active = setup_child(device, kernels_on)

    ms.set_seed(seed)
    overrides = {} if depth is None else {"depth": depth}
    model = create_latte(model_name, input_size=latent, num_frames=frames, enable_flash_attention=flash_attention,
                         **overrides)
    diffusion = create_diffusion("")
    step = TrainStep(DiffusionLoss(model, diffusion, images), Updater(model.trainable_params(), learning_rate=1e-4))
    rng = np.random.default_rng(seed)
    shape = (batch, frames + images, model.in_channels, latent, latent)
    times = []
    for i in range(steps):
        x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        t = ms.Tensor(rng.integers(0, diffusion.num_timesteps, batch).astype(np.int32))
        noise = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        if i == 1 and active:
            kernels.reset_stats()  # count the timed steps only, not the compiling one
        start = time.perf_counter()
        loss, _, _ = step(x, t, noise)
        loss.asnumpy()  # wait for the step to finish
        times.append(time.perf_counter() - start)
    figures = {"kernels": "on" if active else "off", "first_step_s": round(times[0], 4),
               "median_step_s": round(statistics.median(times[1:]), 4),
               "step_times_s": [round(s, 4) for s in times[1:]], "peak_rss_mb": round(peak_rss_mb(), 1)}
    if active:
        figures.update(kernel_figures(steps - 1))
    queue.put(figures)


def bench_step(model_name="Latte-S/2", frames=8, latent=16, batch=2, steps=5, flash_attention=False, seed=0,
               device="CPU", kernels=KERNEL_PATHS, images=0, depth=None):
    """Median seconds of forward + diffusion loss + backward + AdamW, in GRAPH_MODE, float32, for each
    kernel path in `kernels` ("on", "off"), each in a fresh process. `images`: use_image_num, images
    appended to each clip of `frames` frames (image-video joint training); `depth`: the block count if not
    the variant's."""
    if steps < 2:
        raise ValueError("--steps must be at least 2 (the first step includes graph compilation)")
    paths = [run_in_fresh_process(_step_path, (model_name, frames, latent, batch, steps, flash_attention, seed,
                                               device, path == "on", images, depth), f"step (kernels {path})")
             for path in kernels]
    result = {"bench": "step", "model": model_name, "depth": depth or LATTE_MODELS[model_name]["depth"],
              "frames": frames, "images": images, "latent": latent,
              "batch": batch, "flash_attention": flash_attention, "device": device, "steps": steps}
    return combine_paths(result, paths, "median_step_s")
