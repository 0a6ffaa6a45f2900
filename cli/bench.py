"""`latte bench ...`: speed and memory benchmarks, each printing one JSON line."""
import os

import click

from latte_core.atomic import strict_json_line
from latte_toolkit.tools.config import (BENCH_ATTENTION_KEYS, BENCH_CACHE_KEYS, BENCH_CURATE_KEYS,
                                        BENCH_FORWARD_KEYS, BENCH_FVD_KEYS, BENCH_INGEST_KEYS, BENCH_LEARN_KEYS,
                                        BENCH_LOADER_KEYS, BENCH_SAMPLER_KEYS, BENCH_STEP_KEYS, BENCH_VAE_KEYS)

from . import BadInput, configured, key_option, main, setup_mindspore


@main.group()
def bench():
    """Speed and memory benchmarks; each prints one JSON line."""


def _check_variant(name):
    # kept here: latte_core.latte (MindSpore) adds ~1.7 s to `latte --help`
    from latte_core import LATTE_MODELS
    if name not in LATTE_MODELS:
        raise BadInput(f"unknown Latte variant {name!r}; choose one of {', '.join(LATTE_MODELS)}")


def _kernel_paths(choice):
    paths = ("on", "off") if choice == "both" else (choice,)
    if "on" in paths:
        # checked here: the paths run in child processes, whose UserError would reach us as a traceback
        from latte_core.kernels import gemm_backend
        gemm_backend()
    return paths


@bench.command("step")
@configured(
    BENCH_STEP_KEYS,
    key_option("model_name", "--model"), key_option("depth"),
    key_option("frames"), key_option("latent"), key_option("batch"), key_option("steps"),
    key_option("flash_attention", "--flash-attention/--no-flash-attention"),
    key_option("device"), key_option("kernels"), key_option("images"),
)
def bench_step_command(config):
    """Time a training step (forward + diffusion loss + backward + AdamW) in graph mode.

    Each kernel path runs in a fresh process. The top-level figures are the first path's (kernels
    on); `kernels_off` holds the other, `kernels_speedup` their ratio, and `matmul` the dense layers'
    GFLOP/s inside the step against numpy's BLAS on the same matmul shapes.

    \b
    Example:
      latte bench step --model Latte-S/2 --frames 8 --latent 16 --batch 2 --steps 5
      latte bench step --model Latte-S/2 --frames 8 --latent 16 --batch 2 --images 8
    """
    # kept here: latte_core.latte and the step benchmark (MindSpore) add ~1.6 s to `latte --help`
    from latte_core.latte import DEPTH_RULE
    from latte_toolkit.tools.bench.step import bench_step
    _check_variant(config["model_name"])
    if config["depth"] is not None and config["depth"] % 2:
        raise BadInput(f"--depth {config['depth']}: {DEPTH_RULE}")
    click.echo(strict_json_line(bench_step(config["model_name"], config["frames"], config["latent"], config["batch"],
                                           config["steps"], config["flash_attention"], device=config["device"],
                                           kernels=_kernel_paths(config["kernels"]), images=config["images"],
                                           depth=config["depth"])))


@bench.command("forward")
@configured(
    BENCH_FORWARD_KEYS,
    key_option("model_name", "--model"),
    key_option("frames"), key_option("latent"), key_option("batch"), key_option("repeats"),
    key_option("device"), key_option("kernels"),
)
def bench_forward_command(config):
    """Time one denoising forward (inference, float32, a new x and t per call) in graph mode.

    Each kernel path runs in a fresh process; the top-level figures are the first path's. gflops
    counts every matmul (2·M·N·K, QKᵀ and AV included); matmul_floor times numpy's sgemm on the same
    products in the same process (forward_to_numpy_floor: its seconds over the forward's). With both
    paths their outputs must agree within 1e-4 (kernels_on_vs_off_max_rel).

    \b
    Example:
      latte bench forward --model Latte-S/2 --frames 16 --latent 32 --batch 2
    """
    # kept here: latte_core.latte and the forward benchmark (MindSpore) add ~1.4 s to `latte --help`
    from latte_core import LATTE_MODELS
    from latte_toolkit.tools.bench.forward import bench_forward
    _check_variant(config["model_name"])
    patch = LATTE_MODELS[config["model_name"]]["patch_size"]
    if config["latent"] % patch:
        raise BadInput(f"--latent {config['latent']} is not a multiple of {config['model_name']}'s patch size {patch}")
    click.echo(strict_json_line(bench_forward(config["model_name"], config["frames"], config["latent"], config["batch"],
                                              config["repeats"], device=config["device"],
                                              kernels=_kernel_paths(config["kernels"]))))


@bench.command("fvd")
@configured(
    BENCH_FVD_KEYS,
    key_option("frames"), key_option("size"), key_option("batch"), key_option("repeats"), key_option("device"),
)
def bench_fvd_command(config):
    """Speed of `latte eval fvd`'s I3D (random weights, graph mode), its preprocessing, and the distance.

    \b
    Example:
      latte bench fvd --frames 16 --batch 4
    """
    # kept here: the I3D benchmark (MindSpore, scipy, dask) adds ~2.0 s to `latte --help`
    from latte_toolkit.tools.bench.fvd import bench_fvd
    click.echo(strict_json_line(bench_fvd(config["frames"], config["size"], config["batch"], config["repeats"],
                                          device=config["device"])))


@bench.command("vae")
@configured(
    BENCH_VAE_KEYS,
    key_option("size"), key_option("batch"), key_option("repeats"), key_option("dtype"), key_option("device"),
    key_option("kernels"),
)
def bench_vae_command(config):
    """Encode and decode speed of the full sd-vae-ft-mse architecture (random weights), graph mode.

    Each kernel path runs in a fresh process; the top-level figures are the first path's.
    encode_conv_gflops counts the encoder's convolutions (2·M·N·K of each im2col product); conv_floor
    times numpy's sgemm on the same products in the same process (encode_to_numpy_floor: its seconds
    over the encode's).

    \b
    Example:
      latte bench vae --size 256 --batch 4
    """
    # kept here: the VAE benchmark (MindSpore) adds ~1.6 s to `latte --help`
    from latte_toolkit.tools.bench.vae import bench_vae
    if config["size"] % 8:
        raise BadInput(f"--size must be a positive multiple of 8, got {config['size']}")
    click.echo(strict_json_line(bench_vae(config["size"], config["batch"], config["repeats"], config["dtype"],
                                          device=config["device"], kernels=_kernel_paths(config["kernels"]))))


@bench.command("ingest")
@configured(
    BENCH_INGEST_KEYS,
    key_option("sources", "--source", multiple=True, type=click.Path(exists=True),
               help="Inputs to ingest (as for `latte ingest`). Repeatable."),
    key_option("workers"), key_option("replan_inputs"), key_option("keyframe_frames"), key_option("keyframe_size"),
    key_option("repeats"),
)
def bench_ingest_command(config):
    """`ingest --verify` against a plain sequential decord/PIL decode of the same files, in one run.

    With --keyframe-frames N, `keyframe_check` holds the probe of a synthetic N-frame H.264 (PyAV) with
    and without ingest's keyframe check, alternated: medians of --repeats, their ratio, and the
    --verify probe of the same file.

    \b
    Example:
      latte bench ingest --source sky_train/
      latte bench ingest --source sky_train/ --replan-inputs 0 --keyframe-frames 20000
    """
    # kept here: the ingest benchmark (dask, decord, PyAV) adds ~1.8 s to `latte --help`
    from latte_toolkit.tools.bench.ingest import bench_ingest
    if config["keyframe_size"] % 2:
        raise BadInput(f"--keyframe-size must be even (H.264 in yuv420p), got {config['keyframe_size']}")
    click.echo(strict_json_line(bench_ingest(config["sources"], config["workers"], config["replan_inputs"],
                                             config["keyframe_frames"], config["keyframe_size"], config["repeats"])))


@bench.command("curate")
@configured(
    BENCH_CURATE_KEYS,
    key_option("sources", "--source", multiple=True, type=click.Path(exists=True),
               help="Inputs to ingest and curate (default: written 640x360 H.264 clips). Repeatable."),
    key_option("videos"), key_option("frames"), key_option("height"), key_option("width"), key_option("workers"),
    key_option("repeats"),
)
def bench_curate_command(config):
    """The whole `latte curate` stage against decoding the same frames alone, in one run (medians of
    interleaved runs); target: the stage at most 1.5x the decode's seconds.

    \b
    Example:
      latte bench curate --videos 4 --frames 120
    """
    if config["height"] % 2 or config["width"] % 2:
        raise BadInput(f"--height and --width must be even (H.264 in yuv420p), got "
                       f"{config['width']}x{config['height']}")
    # kept here: the curate benchmark (OpenCV, PySceneDetect, decord, PyAV) would load with `latte --help`
    from latte_toolkit.tools.bench.curate import bench_curate
    click.echo(strict_json_line(bench_curate(config["sources"], config["videos"], config["frames"], config["height"],
                                             config["width"], config["workers"], config["repeats"])))


@bench.command("cache")
@configured(
    BENCH_CACHE_KEYS,
    key_option("format"), key_option("vae", type=click.Path(file_okay=False)), key_option("videos"),
    key_option("frames"), key_option("size"), key_option("micro_batch"), key_option("text_encoder"),
    key_option("repeats"), key_option("out", "--out"),
)
def bench_cache_command(config):
    """End-to-end cache frames/s against encode-only frames/s of the same VAE on the same frames.

    With --text-encoder, `text` holds the same job without and with caption embeddings (a caption of
    its own per video), --repeats times each, interleaved: medians of the job's frames/s and of its
    frames/s after the setup (validating the VAE and the text encoder, which a longer job amortises),
    the setup seconds, the encoder's seconds in the shards, and the with/without ratios.

    \b
    Example:
      latte bench cache --format mindrecord
      latte bench cache --text-encoder clip-l --repeats 3
      latte bench cache --vae pretrained/vae-clouds --size 64 --videos 16 --frames 32 --text-encoder small
      latte bench cache --vae pretrained/vae-clouds --size 64 --videos 48 --out s3://bench/runs   # store vs local
    """
    # kept here: the cache benchmark (MindSpore) adds ~2.3 s to `latte --help`
    from latte_toolkit.tools.bench.cache import BENCH_TEXT_ENCODERS, bench_cache
    text_encoder = config["text_encoder"]
    if text_encoder is not None and text_encoder not in BENCH_TEXT_ENCODERS and not os.path.isdir(text_encoder):
        raise BadInput(f"--text-encoder {text_encoder!r} is neither {' nor '.join(BENCH_TEXT_ENCODERS)} nor a "
                       f"text-encoder folder")
    setup_mindspore("CPU")
    click.echo(strict_json_line(bench_cache(config["format"], config["vae"], config["videos"], config["frames"],
                                            config["size"], config["micro_batch"], text_encoder, config["repeats"],
                                            config["out"], config["storage_options"])))


@bench.command("loader")
@configured(
    BENCH_LOADER_KEYS,
    key_option("cache", argument=True, metavar="CACHE_DIR", type=click.Path(exists=True, file_okay=False)),
    key_option("synthetic_gb"), key_option("format"), key_option("batch"), key_option("num_frames"),
    key_option("sample_stride"), key_option("workers"), key_option("max_batches"), key_option("check"),
    key_option("posterior"), key_option("images"),
)
def bench_loader_command(config):
    """Loader samples/s, frames/s and MB/s against a plain sequential read of the same shard files.

    MB/s counts the stored bytes of the frames the loader delivers; the plain read is warm (page
    cache). Also timed: the loader's own latent arithmetic (posterior sampling, scaling) on samples
    already in memory, no I/O, on as many threads as the loader's workers (the floor of its
    per-sample work: loader_to_latent_arithmetic) and on one thread. `loader` is the second epoch whole
    (the rate a run sustains); `loader_first_epoch` the first after its first batch (whose wait, the
    dataset engine's start, is first_batch_seconds). The loader runs in a fresh process, whose peak RSS
    is reported.

    \b
    Example:
      latte bench loader work/cache
      latte bench loader --synthetic-gb 6 --format mindrecord
      latte bench loader --synthetic-gb 0.3 --format parquet --images 8
    """
    # kept here: the loader benchmark (MindSpore's dataset engine) adds ~2.3 s to `latte --help`
    from latte_toolkit.tools.bench.loader import bench_loader
    click.echo(strict_json_line(bench_loader(config["cache"], config["synthetic_gb"], config["format"], config["batch"],
                                             config["num_frames"], config["sample_stride"], None, config["workers"],
                                             config["max_batches"], config["check"], config["posterior"], config["images"])))


@bench.command("attention")
@configured(BENCH_ATTENTION_KEYS, key_option("tokens"), key_option("head_dim"), key_option("block_size"))
def bench_attention_command(config):
    """Peak memory of plain vs flash (block-wise) attention, forward + backward, on CPU.

    Each path runs in a fresh process; `attention_mb` is its peak RSS above the RSS before the call.

    \b
    Example:
      latte bench attention --tokens 16384
    """
    # kept here: the attention benchmark (MindSpore) adds ~1.8 s to `latte --help`
    from latte_toolkit.tools.bench.attention import bench_attention
    click.echo(strict_json_line(bench_attention(config["tokens"], config["head_dim"], config["block_size"])))


@bench.command("sampler")
@configured(
    BENCH_SAMPLER_KEYS,
    key_option("checkpoint"), key_option("vae", type=click.Path(file_okay=False)), key_option("videos"),
    key_option("fast_steps"), key_option("reference_steps"), key_option("batch"), key_option("work"),
)
def bench_sampler_command(config):
    """DPM-Solver++ against DDPM on the same initial noise: quality and wall time of each.

    Samples --videos videos with each sampler (seeds 0..N-1, the same initial noise), checks both
    with `latte quality` against as many real clips of the demo's kind (another seed than any
    shipped run's) and prints each one's pass, Fréchet distance, drift and seconds, the distance
    ratio fast / reference and whether DPM-Solver++ passes within 1.1x DDPM's distance.

    \b
    Example:
      latte bench sampler                       # the shipped cloud model: 64 videos, 20 against 250 steps
      latte bench sampler --videos 16 --reference-steps 100 --work sampler-bench
    """
    # kept here: sampling (MindSpore) adds ~2 s to `latte --help`
    from latte_toolkit.tools.bench.sampler import bench_sampler
    from latte_toolkit.tools.demo import LATTE, VAE
    setup_mindspore("CPU")
    click.echo(strict_json_line(bench_sampler(config["checkpoint"] or LATTE, config["vae"] or VAE, config["videos"],
                                              config["fast_steps"], config["reference_steps"], config["batch"],
                                              config["work"])))


@bench.command("learn")
@configured(
    BENCH_LEARN_KEYS,
    key_option("rung"), key_option("budget_minutes"), key_option("work"), key_option("steps"),
)
def bench_learn_command(config):
    """The learning ladder: tiny end-to-end jobs a model that learns passes in minutes.

    Each rung writes procedural clips, ingests and caches them, fine-tunes the shipped Latte (v
    prediction, EMA warm-up) within --budget-minutes, samples 16 videos and measures them: memorise
    (4 clips, one class each: drift and colours reproduced), shuffled-control (the same clips with
    frames shuffled: the drift check must fail), class-colour (15 of 16 by real-clip colour
    centroids), unconditional-motion (15 of 16 drift within the real range), text-colour and
    text-direction (15 of 16 seen prompts). Prints {"rungs": {NAME: {"passed", figures, "minutes"}}}.

    \b
    Example:
      latte bench learn --rung memorise --budget-minutes 10
    """
    # kept here: the ladder (MindSpore, every stage) adds ~3.4 s to `latte --help`
    from latte_toolkit.tools.bench.learn import run_ladder
    setup_mindspore("CPU")  # run_ladder refuses an unknown rung or a budget too small before any work
    click.echo(strict_json_line(run_ladder(config["rung"], config["work"], config["budget_minutes"], config["steps"])))
