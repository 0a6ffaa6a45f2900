"""The key tables of sampling (`latte sample`: SAMPLE_KEYS) and of the quality check (`latte quality`:
QUALITY_KEYS), apart from the code that runs them so that the `latte` command reads them without
loading MindSpore.
"""
import os

from latte_core.errors import UserError, bounded
from latte_core.keys import AT_LEAST_1, NON_NEGATIVE, OPTIONAL_STR, POSITIVE, SEED, Key, KeyTable, Range
from latte_core.samplers import NOISE_SCHEDULES, SAMPLERS
from latte_toolkit.pipelines.config import ConfigError
from latte_toolkit.pretrained import PRETRAINED


GUIDANCE = Range(0, 100)  # finite: 1e308 overflows the guided epsilon to inf and the videos to NaN


class SampleError(UserError):
    pass


def _check_prompts(values):
    """SAMPLE_KEYS' last check: the table checks that prompts is a list, this that it holds strings."""
    prompts = values["prompts"]
    if prompts is not None and not all(isinstance(prompt, str) for prompt in prompts):
        raise SampleError(f"prompts must be a list of strings, got {bounded(prompts)}")


SAMPLE_KEYS = KeyTable([
    Key("checkpoint", (str,), os.path.join(PRETRAINED, "latte-clouds"),
        "Latte weights: .pt/.pth (official, read without torch), .ckpt, .safetensors, or a run's ckpt/step-N folder"),
    Key("vae_checkpoint", (str,), os.path.join(PRETRAINED, "vae-clouds"),
        "VAE: a diffusers folder, or a .ckpt of sd-vae-ft-mse's architecture"),
    Key("model_name", (str, type(None)), None, "variant for a plain weights file (read from a run folder)"),
    Key("depth", (int, type(None)), None, "override the variant's blocks", range=AT_LEAST_1),
    Key("hidden_size", (int, type(None)), None, "override the variant's width", range=AT_LEAST_1),
    Key("num_heads", (int, type(None)), None, "override the variant's heads", range=AT_LEAST_1),
    Key("condition", (str, type(None)), None, "null, class or text (read from a run folder)", (None, "class", "text")),
    Key("num_classes", (int,), 0, "classes of a class-conditional model", range=NON_NEGATIVE),
    Key("image_size", (int, type(None)), None, "frame size in pixels (a run folder's by default)",
        range=AT_LEAST_1),
    Key("num_frames", (int, type(None)), None, "frames per video (a run folder's by default)", range=AT_LEAST_1),
    Key("sd_scale_factor", (int, float, type(None)), None, "latent scaling factor (the VAE's by default)",
        range=POSITIVE),
    Key("enable_flash_attention", (bool,), False, "flash attention (fused on Ascend, block-wise elsewhere)"),
    Key("use_fp16", (bool,), False, "run the transformer in float16 (meant for Ascend; slower on CPU)"),
    Key("sampler", (str, type(None)), None, f"{' | '.join(SAMPLERS)}; null: ddim if ddim_sampling else ddpm. Given "
        "with ddim_sampling, sampler wins (a warning names the ignored key)", (None,) + tuple(SAMPLERS)),
    Key("sampling_steps", (int, type(None)), None, "steps of the sampler; null: its default ("
        + ", ".join(f"{name} {sampler.default_steps}" for name, sampler in SAMPLERS.items()) + ")",
        range=AT_LEAST_1),
    Key("ddim_sampling", (bool,), False, "MindONE's switch: DDIM instead of DDPM (see sampler)"),
    Key("ddim_eta", (int, float), 0.0, "DDIM eta (0: deterministic)", range=NON_NEGATIVE),
    Key("frame_noise_correlation", (int, float, type(None)), None, "correlation between the frames of the initial "
        "and per-step noise; null: the value the checkpoint's run trained with (its state.json; 0 for a weights "
        "file, as the reference)", range=Range(0.0, 1.0, high_open=True)),
    Key("prediction_type", (str, type(None)), None, "what the model predicts: epsilon or v_prediction; null: the "
        "checkpoint's run's (its state.json; epsilon for a weights file, as the reference)",
        (None, "epsilon", "v_prediction")),
    Key("noise_schedule", (str, type(None)), None, "the betas: linear or squaredcos_cap_v2; null: the checkpoint's "
        "run's (its state.json; linear for a weights file, as the reference)", (None,) + NOISE_SCHEDULES),
    Key("guidance_scale", (int, float), 1.0, "classifier-free guidance scale for class and text models (1: none; "
        "above 1 the batch is doubled with the null class or the empty prompt; other than 1 is refused for an "
        "unconditional model)", range=GUIDANCE),
    Key("class_labels", (list, type(None)), None, "class of each video (cycled); default 0, 1, 2, ..."),
    Key("prompts", (list, type(None)), None, "text models: the prompts; video i gets prompt i mod their count "
        "(a prompts_file's lines follow these)"),
    Key("prompts_file", (str, type(None)), None, "text models: a UTF-8 text file of prompts, one a line (blank lines "
        "skipped)"),
    Key("text_encoder", (str, type(None)), None, "text models: the CLIP text-encoder folder; null: the one the "
        "checkpoint's run recorded in its state.json"),
    Key("force_text_encoder", (bool,), False, "sample with a text_encoder whose sha256 differs from the one the run "
        "recorded (a warning names both)"),
    Key("num_videos", (int,), 4, "videos to make", range=AT_LEAST_1),
    Key("batch_size", (int,), 4, "videos sampled together", range=AT_LEAST_1),
    Key("seed", (int,), 42, "seed of the initial and per-step noise", range=SEED),
    Key("decode_micro_batch", (int,), 8, "frames per VAE decoder call", range=AT_LEAST_1),
    Key("fps", (int,), 8, "frame rate of the GIF and MP4 files", range=AT_LEAST_1),
    Key("output_path", (str,), "samples", "folder for sample_NNN.gif / .mp4 / .npy and summary.json (which holds "
        "this config)"),
    Key("storage_options", (dict, type(None)), None, "options of the fsspec driver when output_path is an s3:// (or "
        "other) URL, e.g. {endpoint_url: ..., key: ..., secret: ...}; default: the driver's own (AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, ~/.aws); never logged, redacted in summary.json"),
    Key("device_target", (str,), "CPU", "CPU, GPU or Ascend", ("CPU", "GPU", "Ascend")),
    Key("use_parallel", (bool,), False, "split the videos over the processes msrun started (video i on rank "
        "i mod ranks); each video's noise depends only on (seed, i), so the files are those of one process"),
], {"guidance": "guidance_scale", "num_samples": "num_videos", "output_dir": "output_path"}, SampleError,
    _check_prompts)
TEXT_KEYS = ("prompts", "prompts_file", "text_encoder")  # the keys that only a text model takes

QUALITY_KEYS = KeyTable([
    Key("samples", str, None, "folder of sample_*.gif (latte sample)"),
    Key("manifest", str, None, "ingest folder of the training videos"),
    Key("vae_checkpoint", str, None, "the VAE the model was trained with"),
    Key("real_clips", int, 64, "real clips to compare with", range=AT_LEAST_1),
], {"vae": "vae_checkpoint"}, ConfigError)

# `latte diagnose`'s default timesteps: three per band of 250
DIAGNOSE_TIMESTEPS = (25, 125, 225, 300, 400, 475, 550, 650, 725, 800, 900, 975)
ROUND_TRIP_FROM = (200, 400, 600)

DIAGNOSE_KEYS = KeyTable([
    Key("checkpoint", str, None, "a `latte train` run folder (its newest checkpoint), a ckpt/step-N folder, or a "
        "weights file"),
    Key("cache", str, None, "a latent cache of the data the model learns (`latte cache`): its clips are noised"),
    Key("vae_checkpoint", str, os.path.join(PRETRAINED, "vae-clouds"), "the cache's VAE, for the decoded x0 "
        "predictions and their drift"),
    Key("out", str, "latte-diagnose", "folder for diagnose.json and x0_predictions.png"),
    Key("timesteps", list, list(DIAGNOSE_TIMESTEPS), "the timesteps probed (0..999), grouped into the bands "
        "0-249, 250-499, 500-749, 750-999"),
    Key("clips", int, 16, "real clips noised at each timestep (the cache must hold as many videos)",
        range=Range(2, 4096)),
    Key("round_trip_from", list, list(ROUND_TRIP_FROM), "timesteps (1..999; [] in a YAML for none) the clips are noised to "
        "and then sampled back from (deterministic DDIM, 25 model calls): how much of the clips' picture and drift "
        "the model brings back"),
    Key("seed", int, 0, "seed of the clips chosen and of the noise", range=SEED),
    Key("prediction_type", OPTIONAL_STR, None, "what the model predicts; null: the run's (its state.json), "
        "epsilon for a weights file", (None, "epsilon", "v_prediction")),
], {"vae": "vae_checkpoint"}, ConfigError)


class FvdError(UserError):
    """Bad input to `latte eval fvd`: the message names the source, file or key."""


FVD_KEYS = KeyTable([
    Key("real", str, None, "the real videos: a folder of videos, an ingest folder (or its manifest.parquet), a "
        "curate folder (its clips), or a statistics .npz of --save-stats"),
    Key("fake", str, None, "the generated videos: a folder of videos (of a `latte sample` folder, its MP4s), an "
        "ingest folder (or its manifest.parquet) or a curate folder"),
    Key("i3d", str, None, "the I3D weights, i3d_pretrained_400.pt (the TATS / cd-fvd release; never downloaded)"),
    Key("num_videos", int, 2048, "videos of each set (drawn, seeded, from a larger set); fewer is an error "
        "unless allow_fewer", range=AT_LEAST_1),
    Key("allow_fewer", bool, False, "compute on fewer videos than num_videos (a warning; the counts are in the "
        "result)"),
    Key("frames", int, 16, "frames per clip (FVD16, FVD128, ...; the I3D needs at least 9)", range=Range(9, 4096)),
    Key("resolution", int, 256, "each frame centre-cropped to a square and resized to this size before the I3D's "
        "own resize to 224", range=Range(16, 4096)),
    Key("real_stride", int, 1, "take every n-th frame of the real videos' clips (as Latte's evaluation does)",
        range=AT_LEAST_1),
    Key("seed", int, 0, "seed of the videos drawn, the real clips' first frames, KVD's subsets and the bootstrap",
        range=SEED),
    Key("bootstrap", int, 0, "resample the fake features this many times (0: none) for the FVD's std and "
        "2.5 / 97.5 percentiles", range=Range(0, 100_000)),
    Key("save_stats", OPTIONAL_STR, None, "write the real set's statistics (mean, covariance, count, features, "
        "protocol) to this .npz"),
    Key("out", OPTIONAL_STR, None, "also write the JSON result to this file"),
    Key("batch_size", int, 2, "videos per I3D call (bounds the memory: ~0.8 GB each on CPU, `latte bench fvd`)",
        range=AT_LEAST_1),
    Key("unit_batches", int, 4, "I3D calls per dask unit", range=AT_LEAST_1),
    Key("workers", int, 0, "local dask worker processes; 0 runs in this process", range=NON_NEGATIVE),
    Key("scheduler", OPTIONAL_STR, None, "address of an existing dask scheduler, e.g. tcp://10.0.0.1:8786"),
    Key("use_parallel", bool, False, "split the videos over the processes msrun started (video i on rank i mod "
        "ranks); every rank gets the same result, rank 0 writes the files"),
    Key("device_target", str, "CPU", "CPU, GPU or Ascend (graph mode; only CPU has been run)", ("CPU", "GPU", "Ascend")),
], {}, FvdError)
