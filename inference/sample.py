"""`latte sample`: videos from Latte weights: diffusion sampling, VAE decoding, GIF / MP4 / latents.

    checkpoint (official .pt, converted .ckpt/.safetensors, or a run's ckpt/step-N/ folder: its EMA
    weights and the architecture in its state.json) + VAE (diffusers folder or .ckpt)
      ─ noise from numpy, per video (seed, index) ─ a sampler of latte_core.samplers (DDPM 250 steps,
        DDIM with eta, DPM-Solver++ 20 steps) ─ classifier-free guidance for class and text
        models (cfg scale > 1) ─ VAE decode in frame micro-batches ─ OUTPUT/sample_NNN.{gif,mp4,npy}

Text models condition on prompts encoded by a CLIP TextEncoder (by default the one the checkpoint's run
recorded in its state.json, refused if its files changed); the empty prompt's embedding is guidance's
null condition, as the null class is for class models.

Without a config, the project's own small weights (pretrained/, trained on procedural clouds)
are used, so `latte sample` works on a fresh machine with no downloads.
"""
import json
import logging
import os
import time
import warnings

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from mindspore.mint.distributed import all_gather_object, get_world_size

from latte_core import create_latte
from latte_core.atomic import make_output_dir, write_json_atomically
from latte_core.checkpoint import CheckpointError, read_state_dict, set_weights
from latte_core.diffusion import noise_source
from latte_core.latte import LATTE_MODELS, TEXT_TOKENS
from latte_core.runtime import join_msrun
from latte_core.samplers import create_sampler, sample as sample_latents
from latte_core.text_encoder import load_text_encoder
from latte_core.text_identity import TextEncoderIdentity
from latte_core.vae import load_vae
from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.storage import clear_folder, is_url, local_cache, open_store, redact_config, scratch_for
from latte_toolkit.datasets.video import read_manifest, to_frames, write_gif, write_mp4
from latte_toolkit.pipelines.cache import vae_fingerprint

from .config import SAMPLE_KEYS, TEXT_KEYS, SampleError

logger = logging.getLogger(__name__)


def _model_settings(config):
    """(weights file, Latte constructor settings, the text encoder the run recorded or None) for the
    checkpoint the config names."""
    path = config["checkpoint"]
    settings, recorded_encoder = {}, None
    if os.path.isdir(path):
        weights = os.path.join(path, "ema.ckpt")
        state_path = os.path.join(path, "state.json")
        if not os.path.isfile(weights) or not os.path.isfile(state_path):
            raise SampleError(f"{path}: a checkpoint folder needs ema.ckpt and state.json (a `latte train` ckpt/step-N)")
        with open(state_path) as handle:
            state = json.load(handle)
        trained = state["config"]
        settings = {k: trained[k] for k in ("model_name", "depth", "hidden_size", "num_heads", "condition",
                                            "num_classes", "image_size", "num_frames", "learn_sigma",
                                            "patch_embedder", "sd_scale_factor")}
        settings["frame_noise_correlation"] = trained.get("frame_noise_correlation", 0.0)  # runs before the key: 0
        settings["prediction_type"] = trained.get("prediction_type", "epsilon")
        settings["noise_schedule"] = trained.get("noise_schedule", "linear")
        recorded_encoder = TextEncoderIdentity.from_record(state.get("text_encoder"), state_path)
    elif os.path.isfile(path):
        weights = path
    else:
        raise SampleError(f"{path}: no such checkpoint")
    # the other prediction type or schedule reads the same outputs as another quantity: noise-like videos, no error
    for key, what in (("prediction_type", "to predict"), ("noise_schedule", "with the noise schedule")):
        if settings.get(key) and config[key] not in (None, settings[key]):
            raise SampleError(f"{key} {config[key]!r}: {path} was trained {what} {settings[key]} (its state.json); "
                              f"leave the key out")
    for key in ("model_name", "depth", "hidden_size", "num_heads", "condition", "image_size", "num_frames",
                "sd_scale_factor", "frame_noise_correlation", "prediction_type", "noise_schedule"):
        if config[key] is not None:
            settings[key] = config[key]
    if config["num_classes"]:
        settings["num_classes"] = config["num_classes"]
    if settings.get("model_name") not in LATTE_MODELS:
        raise SampleError(f"model_name {settings.get('model_name')!r}: give one of {', '.join(LATTE_MODELS)}")
    for key, default in (("image_size", 256), ("num_frames", 16), ("frame_noise_correlation", 0.0),
                         ("prediction_type", "epsilon"), ("noise_schedule", "linear")):
        settings.setdefault(key, default)
    return weights, settings, recorded_encoder


def _read_prompts(config):
    """The prompts: the prompts key's, then the prompts file's non-blank lines. A file that cannot be read,
    is not UTF-8 or holds no prompt is a SampleError naming it."""
    prompts = list(config["prompts"] or [])
    path = config["prompts_file"]
    if path is not None:
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as err:
            raise SampleError(f"prompts_file {path}: cannot read it ({err.strerror or err})") from None
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not part of a prompt
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            raise SampleError(f"prompts_file {path}: not UTF-8 text (line {line}: {err.reason}); save it as "
                              f"UTF-8") from None
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if not lines:
            raise SampleError(f"prompts_file {path}: holds no prompt (one prompt a line)")
        prompts += lines
    return prompts


def _text_encoder(config, recorded, checkpoint, log):
    """The TextEncoder to sample with: the text_encoder key's folder, or the one the run recorded (a
    TextEncoderIdentity); one whose sha256 differs from the recorded one is refused unless
    force_text_encoder (then a warning, when `log`)."""
    folder = config["text_encoder"]
    if folder is None:
        if recorded is None:
            where = "its state.json has no text_encoder" if os.path.isdir(checkpoint) else "a weights file records none"
            raise SampleError(f"text_encoder: {checkpoint} does not record the text encoder it was trained with "
                              f"({where}); give it with --text-encoder DIR")
        folder = recorded.path
    force = ("force_text_encoder" if log else "") if config["force_text_encoder"] else None
    return load_text_encoder(folder, recorded, recorded_by=f"{checkpoint} was trained with",
                             advice="; give that one, or --force-text-encoder to sample anyway", force=force)


def _encode_prompts(encoder, prompts, log):
    """(embeddings (len(prompts), 77, D), the empty prompt's (1, 77, D)): each distinct prompt encoded
    once. The encoder's warning about prompts cut to 77 tokens is logged once, when `log` (rank 0)."""
    distinct = list(dict.fromkeys(prompts))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # it warns on every call, however often this process has sampled
        ids = encoder.tokenize(distinct)
    if log:
        for message in dict.fromkeys(str(warning.message) for warning in caught):
            logger.warning("%s", message)
    encoded = encoder.encode_ids(np.concatenate([ids, encoder.tokenize([""])]))
    return encoded[[distinct.index(prompt) for prompt in prompts]], encoded[-1:]


def _text_embed_dim(state, weights):
    """The encoder width a text model's weights take: its projection reads 77 x that many features."""
    projection = state.get("text_embedding_projection.1.weight")
    if projection is None or projection.ndim != 2 or projection.shape[1] % TEXT_TOKENS:
        raise SampleError(f"{weights}: not a text-conditioned Latte (no text_embedding_projection.1.weight taking "
                          f"{TEXT_TOKENS} x the encoder's width); give the condition it was trained with")
    return projection.shape[1] // TEXT_TOKENS


def _sampler(config):
    """(sampler, steps) from the `sampler` key, or MindONE's `ddim_sampling` when it is null; a step count
    the sampler cannot take is a SampleError naming sampling_steps."""
    name = config["sampler"]
    if name is None:
        name = "ddim" if config["ddim_sampling"] else "ddpm"
    elif config["ddim_sampling"] and name != "ddim":
        logger.warning("sampler %s given: ddim_sampling: true is ignored (sampler wins)", name)
    try:
        sampler, _, steps = create_sampler(name, config["sampling_steps"])
        return sampler, steps
    except ValueError as err:
        raise SampleError(f"sampling_steps: {err}") from None


def _guided_cell(model, scale):
    """The model under classifier-free guidance, as one compiled cell: the reference's sampling on a
    doubled batch (conditions, then null classes or empty-prompt embeddings), guiding the epsilon channels."""
    class Guided(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.model = model

        def construct(self, x, t, y=None, text_embedding=None):
            return self.model.forward_with_cfg(x, t, y, scale, text_embedding)

    return Guided()


def run_sample(config, progress=True, rank=0, world=1):
    """Sample config["num_videos"] videos (config: SAMPLE_KEYS.load's, whose checks it relies on), those of
    `rank` of `world` processes (see join_parallel); returns the summary, which rank 0 also writes as
    summary.json with the resolved config under "config" and every rank's times under "ranks"."""
    sampler, steps = _sampler(config)  # refused before anything is loaded
    started = time.perf_counter()
    weights, settings, recorded_encoder = _model_settings(config)
    prompts = _prompts_of(config, settings.get("condition"))
    remote = config["output_path"] if is_url(config["output_path"]) else None  # an object store: uploaded at the end
    if remote:
        store = open_store(remote, config.get("storage_options"), "output_path")  # refused before any work
    else:
        make_output_dir(config["output_path"], "output_path", create=False)  # refused before any work
    vae, model, encoder = _load_model(config, weights, settings, recorded_encoder, log=rank == 0)
    load_s = time.perf_counter() - started

    guided, conditions = _conditioning(config, settings, encoder, prompts, log=rank == 0)
    net = _guided_cell(model, float(config["guidance_scale"])) if guided else model
    _, diffusion, _ = create_sampler(sampler.name, steps, learn_sigma=model.learn_sigma,
                                     frame_noise_correlation=settings["frame_noise_correlation"],
                                     predict_v=settings["prediction_type"] == "v_prediction",
                                     noise_schedule=settings["noise_schedule"])
    shape_one = (settings["num_frames"], model.in_channels) + (settings["image_size"] // vae.downsample_factor,) * 2
    started = time.perf_counter()  # compile: the first call of the network, on a batch of zeros
    batch = list(range(config["batch_size"]))
    net(Tensor(np.zeros((len(batch) * (2 if guided else 1),) + shape_one, np.float32)),
        Tensor(np.zeros(len(batch) * (2 if guided else 1), np.int32)), **(conditions(batch) or {})).asnumpy()
    compile_s = time.perf_counter() - started

    started = time.perf_counter()
    if remote:  # written into a scratch folder of its own, then each file PUT under its final key
        out = scratch_for(remote, f"samples-{rank}")
        clear_folder(out)
    else:
        out = make_output_dir(config["output_path"], "output_path")
    written = []
    mine = list(range(rank, config["num_videos"], world))  # this rank's videos
    for first in range(0, len(mine), config["batch_size"]):
        indices = mine[first:first + config["batch_size"]]
        latents = _sample_batch(config, indices, sampler, steps, diffusion, net, shape_one, conditions, guided,
                                settings["frame_noise_correlation"], progress)
        written += _write_videos(config, out, indices, latents, vae, settings)
    sample_s = time.perf_counter() - started
    times = {"rank": rank, "videos": len(written), "checkpoint_loading_s": round(load_s, 2),
             "compile_s": round(compile_s, 2), "total_sample_s": round(sample_s, 2)}
    ranks = [times]
    if remote:
        written = [f"{remote}/{os.path.relpath(path, out)}" for path in written]
    if world > 1:
        ranks, written = _gather_over_ranks(times, written)
    summary = {"checkpoint": config["checkpoint"], "model": settings["model_name"], "condition": settings.get("condition"),
               "image_size": settings["image_size"], "num_frames": settings["num_frames"],
               "method": sampler.name, "steps": steps, "frame_noise_correlation": settings["frame_noise_correlation"],
               "prediction_type": settings["prediction_type"], "noise_schedule": settings["noise_schedule"],
               "guidance_scale": config["guidance_scale"] if guided else None, "videos": len(written),
               **{k: max(r[k] for r in ranks) for k in ("checkpoint_loading_s", "compile_s", "total_sample_s")},
               "ranks": ranks, "output_path": remote or out, "files": written}
    if encoder is not None:
        summary["text_encoder"] = encoder.identity.record()
        summary["prompts"] = [{"file": _video_path(remote or out, i) + ".gif", "prompt": prompts[i % len(prompts)]}
                              for i in range(config["num_videos"])]
    summary["config"] = redact_config(config)  # storage_options never in a JSON written
    if remote:  # this rank's files (.npy, .gif, .mp4), from its own scratch folder
        for name in sorted(os.listdir(out)):
            if name != "summary.json" and not name.startswith("."):
                store.put_file(os.path.join(out, name), name)
    if rank == 0:
        write_json_atomically(os.path.join(out, "summary.json"), summary)
        if remote:  # last: a summary.json in the store means every file it names is there
            store.put_file(os.path.join(out, "summary.json"), "summary.json")
    return summary


def sampler_for_training(train_config):
    """The `sample(checkpoint_folder, step)` that `latte train` runs every sample_interval steps (None when
    it is 0): DPM-Solver++ with 20 steps, sample_num_videos videos decoded by sample_vae into
    OUTPUT/samples/step-N. Checked before training starts, so a run is not refused at its first samples: the
    VAE against the sha256 a cache recorded, and a text run's prompts (the data's first distinct captions)."""
    if not train_config["sample_interval"]:
        return None
    vae, data = train_config["sample_vae"], train_config["data_folder"]
    if train_config["train_data_type"] == "video_file":
        rows = read_manifest(data)
    else:
        cache = open_cache(local_cache(data, train_config.get("storage_options"), "data_folder")
                           if is_url(data) else data)
        if vae_fingerprint(vae) != cache.info["vae_sha256"]:
            raise SampleError(f"sample_vae {vae}: not the VAE the cache {data} was made with (sha256 differs)")
        rows = [cache.entries[video] for video in cache.ids]
    count = train_config["sample_num_videos"]
    keys = {"vae_checkpoint": vae, "sampler": "dpm-solver++", "sampling_steps": 20, "num_videos": count,
            "batch_size": count, "seed": train_config["seed"]}
    if train_config["condition"] == "text":
        keys["prompts"] = list(dict.fromkeys(row["caption"] for row in rows if row.get("caption")))[:count]
        if not keys["prompts"]:
            raise SampleError(f"sample_interval: the text run's data {data} holds no caption to sample")

    def sample(checkpoint, step):
        output = os.path.join(train_config["output_path"], "samples", f"step-{step:08d}")
        return run_sample(SAMPLE_KEYS.load(None, {**keys, "checkpoint": checkpoint, "output_path": output}),
                          progress=False)
    return sample


def _prompts_of(config, condition):
    """A text model's prompts (refused when there are none); None for other models, which refuse the
    text keys."""
    if condition == "text":
        prompts = _read_prompts(config)
        if not prompts:
            raise SampleError(f"{config['checkpoint']} is a text model: give its prompts (--prompt TEXT, repeatable, "
                              f"or --prompts-file FILE)")
        return prompts
    if condition not in ("class", "text") and config["guidance_scale"] != 1:
        raise SampleError(f"guidance_scale {config['guidance_scale']} is for class and text models; "
                          f"{config['checkpoint']} is unconditional (condition: null): give 1 or none")
    given = [key for key in TEXT_KEYS if config[key] is not None]
    if given:
        kind = "class-conditional" if condition == "class" else "unconditional"
        raise SampleError(f"{given[0]} is for text models; {config['checkpoint']} is {kind} (condition: "
                          f"{condition or 'null'})")
    return None


def _load_model(config, weights, settings, recorded_encoder, log):
    """(VAE, Latte with the checkpoint's weights in inference mode, TextEncoder of a text model or None);
    every misfit between them is a SampleError."""
    try:
        vae = load_vae(config["vae_checkpoint"])
        state = read_state_dict(weights)
    except CheckpointError as err:
        raise SampleError(str(err)) from None
    factor = vae.downsample_factor
    if settings["image_size"] % factor:
        raise SampleError(f"image_size {settings['image_size']} is not a multiple of the VAE's {factor}")
    overrides = {k: settings[k] for k in ("depth", "hidden_size", "num_heads", "learn_sigma", "patch_embedder")
                 if settings.get(k) is not None}
    condition, encoder = settings.get("condition"), None
    if condition == "text":
        overrides["text_embed_dim"] = _text_embed_dim(state, weights)
        encoder = _text_encoder(config, recorded_encoder, config["checkpoint"], log)
        if encoder.width != overrides["text_embed_dim"]:
            raise SampleError(f"text_encoder {encoder.folder} encodes {encoder.width}-wide embeddings; {weights} was "
                              f"trained on {overrides['text_embed_dim']}-wide ones (its text_embed_dim)")
    model = create_latte(settings["model_name"], input_size=settings["image_size"] // factor,
                         in_channels=vae.config["latent_channels"], num_frames=settings["num_frames"],
                         condition=condition, num_classes=max(settings.get("num_classes") or 1, 1),
                         enable_flash_attention=config["enable_flash_attention"], **overrides)
    try:
        set_weights(model, state, weights, recompute=("pos_embed", "temp_embed"))
    except CheckpointError as err:
        raise SampleError(str(err)) from None
    del state  # the model holds its own copy of the weights
    model.set_train(False)
    if config["use_fp16"]:
        ms.amp.auto_mixed_precision(model, "O2", dtype=ms.float16)
    return vae, model, encoder


def _conditioning(config, settings, encoder, prompts, log):
    """(guided, conditions): whether classifier-free guidance doubles the batch, and conditions(batch), the
    model's keyword arguments for the videos `batch`: each one's class or prompt embedding, then with
    guidance as many null classes or empty-prompt embeddings; None without a condition."""
    condition = settings.get("condition")
    guided = condition in ("class", "text") and config["guidance_scale"] > 1.0
    if condition == "class":
        labels = config["class_labels"] or list(range(settings["num_classes"]))
        if any(not 0 <= int(label) < settings["num_classes"] for label in labels):
            raise SampleError(f"class_labels {labels} must lie in 0..{settings['num_classes'] - 1}")
    elif condition == "text":
        prompt_embeddings, empty_prompt = _encode_prompts(encoder, prompts, log)

    def conditions(batch):
        if condition == "class":
            name, values = "y", np.array([labels[i % len(labels)] for i in batch], np.int32)
            null = np.full(len(batch), settings["num_classes"], np.int32)
        elif condition == "text":
            name, values = "text_embedding", prompt_embeddings[[i % len(prompts) for i in batch]]
            null = np.repeat(empty_prompt, len(batch), axis=0)
        else:
            return None
        return {name: Tensor(np.concatenate([values, null]) if guided else values)}

    return guided, conditions


def _sample_batch(config, indices, sampler, steps, diffusion, net, shape_one, conditions, guided, correlation,
                  progress):
    """The latents (len(indices), F, C, h, w) of the videos `indices`. Always whole batches (one compiled
    shape): a short last batch is padded with extra videos that are dropped. Video i's noise, initial
    and per step, is its own stream seeded by (seed, i): the same video whatever the batch size or the
    rank it is sampled in."""
    count = len(indices)
    batch = indices + list(range(config["num_videos"], config["num_videos"] + config["batch_size"] - count))
    seeds = [[config["seed"], i] for i in batch]
    noise = noise_source([s + [0] for s in seeds], (len(seeds),) + shape_one, correlation)()
    step_seeds = [s + [1] for s in seeds]
    if guided:  # the null half follows the same noise: it only supplies the unconditional eps
        noise, step_seeds = np.concatenate([noise, noise]), step_seeds + step_seeds
    return sample_latents(sampler, diffusion, steps, net, noise.shape, noise=noise, model_kwargs=conditions(batch),
                          progress=progress, seed=step_seeds, eta=float(config["ddim_eta"])).asnumpy()[:count]


def _write_videos(config, out, indices, latents, vae, settings):
    """Decode the latents and write each video's sample_NNN.npy, .gif and .mp4; returns the GIF paths."""
    scale = settings.get("sd_scale_factor") or vae.config["scaling_factor"]
    frames = to_frames(vae.decode_video(latents / scale, micro_batch=config["decode_micro_batch"]))
    written = []
    for i, index in enumerate(indices):
        name = _video_path(out, index)
        np.save(name + ".npy", latents[i])
        write_gif(name + ".gif", frames[i], config["fps"])
        write_mp4(name + ".mp4", frames[i], fps=config["fps"])
        written.append(name + ".gif")
    return written


def _video_path(out, index):
    """OUTPUT/sample_NNN, the name of video `index`'s files without their suffix."""
    return os.path.join(out, f"sample_{index:03d}")


def join_parallel(config):
    """(rank, ranks) of this process: (0, 1), or its place in the msrun job with use_parallel."""
    if not config["use_parallel"]:
        return 0, 1
    return join_msrun(SampleError, "start the sampling with msrun, or drop --use_parallel")


def _gather_over_ranks(times, written):
    """Every rank's timing row and all files, on every rank (in video order)."""
    gathered = [None] * get_world_size()
    all_gather_object(gathered, (times, written))
    ranks = [row for row, _ in gathered]
    files = sorted(name for _, names in gathered for name in names)
    return ranks, files


def summary_table(summary):
    """The seed's closing table, in Markdown: one row per rank."""
    header = ("| model | image size | frames | method | steps | rank | videos | ckpt loading time | compile time | "
              "total sample time |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    size = f"{summary['image_size']}x{summary['image_size']}"
    return header + "\n".join(
        f"| {summary['model']} | {size} | {summary['num_frames']} | {summary['method']} | {summary['steps']} | "
        f"{row['rank']} | {row['videos']} | {row['checkpoint_loading_s']}s | {row['compile_s']}s | "
        f"{row['total_sample_s']}s |" for row in summary["ranks"])
