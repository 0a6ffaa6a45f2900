"""`latte eval fvd`: the Fréchet Video Distance of generated videos to real ones, with the standard I3D."""

import click

from latte_core.atomic import strict_json_line
from latte_toolkit.inference.config import FVD_KEYS, FvdError

from . import configured, key_option, main, setup_mindspore


@main.group(name="eval")
def eval_group():
    """Evaluation metrics of generated videos (`latte eval fvd`)."""


@eval_group.command()
@configured(
    FVD_KEYS,
    key_option("real"),
    key_option("fake"),
    key_option("i3d"),
    key_option("num_videos"),
    key_option("allow_fewer", "--allow-fewer/--no-allow-fewer"),
    key_option("frames"),
    key_option("resolution"),
    key_option("real_stride"),
    key_option("seed"),
    key_option("bootstrap"),
    key_option("save_stats"),
    key_option("out"),
    key_option("batch_size"),
    key_option("unit_batches"),
    key_option("workers"),
    key_option("scheduler"),
    key_option("use_parallel", "--use_parallel", "--use-parallel",
               help="True: split the videos over the processes msrun started (the same statistics as one process)."),
    key_option("device_target", "--device", help="Device [CPU]; graph mode (only CPU has been run)."),
)
def fvd(config):
    """FVD (and KVD) between real and generated videos, named by clip length (FVD16, FVD128).

    The detector is the VideoGPT / TATS I3D (i3d_pretrained_400.pt, which the toolkit never downloads);
    features are its 400 logits averaged over time, the distance as cd-fvd 0.1.1 computes it. The
    protocol (videos drawn, frames, stride, crop and resize, the detector's sha256) is in the result; a
    statistics file of another protocol is refused. Prints a line of text, then the result as JSON.

    \b
    Example:
      latte eval fvd --real work/ingest --fake samples/ --i3d i3d_pretrained_400.pt --save-stats real16.npz
      latte eval fvd --real real16.npz --fake samples/ --i3d i3d_pretrained_400.pt --bootstrap 100
    """
    # kept here: the evaluation (MindSpore, the I3D, scipy, dask) adds ~2.0 s to `latte --help`
    from latte_core.runtime import join_msrun
    from latte_toolkit.inference.fvd import result_line, run_fvd
    setup_mindspore(config["device_target"])
    rank, ranks = 0, 1
    if config["use_parallel"]:
        rank, ranks = join_msrun(FvdError, "start the evaluation with msrun, or drop --use_parallel")
    result = run_fvd(config, rank, ranks)
    if rank == 0:
        click.echo(result_line(result))
        click.echo(strict_json_line(result))
