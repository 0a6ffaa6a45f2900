"""`latte train`: the training loop, top to bottom.

    checks (train/preflight.py: device limits, model keys, the checkpoint to resume and its settings)
    ─ devices (msrun ranks) ─ loader (cache, or videos + VAE) ─ Latte (+ pretrained, recompute, AMP)
    ─ TrainStep (train/step.py) ─ resume from OUTPUT/ckpt/ ─ OUTPUT/config.json ─ loop:
        lr(step) ─ accumulation_steps micro-batches, each one call of the step (timesteps, noise, label
        dropout from numpy generators seeded by (seed, epoch, sample); the last call updates) ─ a line
        of OUTPUT/train_log.jsonl ─ a checkpoint every ckpt_save_interval steps (or epochs)
    ─ the last checkpoint, OUTPUT/loss_curve.png

Nothing is written to OUTPUT until every check (keys, checkpoints, data, model, the checkpoint's fit)
has passed, so a refused run leaves its folder as it was.

Every random draw is a function of the seed and the sample's place in the data plan, so a run resumed
from a checkpoint continues bit-identically, and 2 ranks × batch b compute what 1 rank × batch 2b does.

Image-video joint training (image_video_joint, use_image_num = I): the loader appends I images of other
videos to each clip, (B, F + I, C, h, w); one timestep and one noise draw per sample cover its clip and
images, the loss is the mean over all F + I frames, and with class labels each image's label is dropped
on its own draw (the reference draws one decision per sample for all of its images).

Text conditioning (condition: text): each sample carries its video's caption embedding (77, D) (from a
cache made with --text-encoder, or encoded from the manifest's captions by text_encoder), and with
images each image its own video's; caption dropout (class_dropout_prob) replaces an embedding by the
empty prompt's on the same seeded draws as label dropout. The model takes D from the data, and every
checkpoint's state.json records the encoder ({"path", "sha256"}: `latte sample` encodes prompts with it;
a resume with another encoder is refused).
"""
import json
import logging
import math
import os
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from tqdm.auto import tqdm

from latte_core import LATTE_MODELS, create_diffusion, create_latte
from latte_core.atomic import make_output_dir, strict_json_line
from latte_core.checkpoint import load_weights
from latte_core.diffusion import correlate_frames
from latte_core.errors import UserError
from latte_core.plot import plot_loss_curve
from latte_core.runtime import join_msrun, prefer_avx2_onednn
from latte_core.vae import load_vae
from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.loader import CacheLoader, VideoLoader
from latte_toolkit.datasets.storage import is_url, redact_config, stream_cache

from .checkpoint import ResumeError, load_checkpoint, remove_staging, save_checkpoint, set_aside
from .preflight import (TrainingError, check_cache_fits, check_image_labels, check_model_keys,
                        check_pretrained_text_width, check_resume_text_encoder, preflight)
from .step import EMA, ClassDiffusionLoss, DiffusionLoss, MeanOverRanks, TextDiffusionLoss, TrainStep, Updater

logger = logging.getLogger(__name__)
DIFFUSION_STREAM = 1  # keeps the diffusion draws apart from the loader's posterior draws


# ------------------------------------------------------------------------------------------ pure pieces
def learning_rate(config, step, max_steps):
    """The learning rate of optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    peak, warmup = config["start_learning_rate"], config["warmup_steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    if config["scheduler"] == "constant":
        return peak
    decay = config["decay_steps"] or max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / decay)
    return config["end_learning_rate"] + 0.5 * (peak - config["end_learning_rate"]) * (1 + math.cos(math.pi * progress))


def draw_timestep(rng, num_timesteps, logit_normal=None):
    """One training timestep: uniform over 0..T-1 (the reference), or with logit_normal = (mean, std)
    T·sigmoid(mean + std·z) rounded down, z ~ N(0, 1) (Esser et al. 2024's logit-normal sampling, on the
    discrete chain): more of the steps at the middle noise levels."""
    if logit_normal is None:
        return rng.integers(0, num_timesteps)
    mean, std = logit_normal
    fraction = 1.0 / (1.0 + np.exp(-(mean + std * rng.standard_normal())))
    return min(int(fraction * num_timesteps), num_timesteps - 1)


def diffusion_draws(indices, epoch, seed, shape, num_timesteps, dropout_prob, num_images=0, frame_noise_correlation=0.0,
                    logit_normal=None):
    """Per sample: timestep (draw_timestep), noise (its video frames correlated by frame_noise_correlation,
    the images' independent) and label- (or caption-) dropout decision, from a generator seeded by the
    sample; then the dropout decision of each of its num_images image labels (captions), (B, num_images)."""
    t = np.empty(len(indices), np.int32)
    noise = np.empty((len(indices),) + tuple(shape), np.float32)
    drop = np.zeros(len(indices), np.int32)
    drop_image = np.zeros((len(indices), num_images), np.int32)
    for i, index in enumerate(indices):
        rng = np.random.default_rng([seed, DIFFUSION_STREAM, epoch, int(index)])
        t[i] = draw_timestep(rng, num_timesteps, logit_normal)
        noise[i] = correlate_frames(rng.standard_normal(shape, dtype=np.float32), frame_noise_correlation,
                                    shape[0] - num_images)
        drop[i] = rng.random() < dropout_prob
        if num_images:
            drop_image[i] = rng.random(num_images) < dropout_prob
    return t, noise, drop, drop_image


# ------------------------------------------------------------------------------------------ set-up
def setup_devices(config):
    """Device and graph mode; with use_parallel, join the msrun job. Returns (rank, world size)."""
    prefer_avx2_onednn()
    try:
        ms.set_device(config["device_target"])
    except (RuntimeError, ValueError) as err:
        raise TrainingError(f"device_target {config['device_target']}: {err}") from None
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(config["seed"])
    if not config["use_parallel"]:
        return 0, 1
    rank, world = join_msrun(TrainingError, "start the run with msrun")
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=world)
    return rank, world


def build_loader(config, rank, world, text_encoder=None, storage_options=None):
    """(loader, latent size, latent channels) for the data the config names; `text_encoder` (a text run
    from videos) encodes the manifest's captions."""
    folder = config["data_folder"]
    if is_url(folder):
        if config["train_data_type"] == "video_file":
            raise TrainingError(f"data_folder {folder}: training from videos in an object store is not supported; "
                                f"run `latte cache` into the store and train from that cache")
        # the shards stream through a local cache of at most cache_limit_gb, each checked as it is fetched
        folder, stream = stream_cache(folder, storage_options, rank, config["cache_limit_gb"],
                                      config["prefetch_shards"], config["shuffle_window"])
    else:
        stream = None
    common = dict(batch_size=config["train_batch_size"], num_frames=config["num_frames"],
                  sample_stride=config["sample_stride"], clips_per_video=config["clips_per_video"], seed=config["seed"],
                  rank=rank, world_size=world, shuffle=config["shuffle"],
                  num_parallel_workers=config["num_parallel_workers"], posterior=config["posterior"],
                  use_image_num=config["use_image_num"] or 0)
    if config["train_data_type"] == "video_file":
        if not config["vae_checkpoint"]:
            raise TrainingError("train_data_type video_file needs vae_checkpoint (a diffusers VAE folder or .ckpt)")
        vae = load_vae(config["vae_checkpoint"])
        if config["sd_scale_factor"] is not None and abs(vae.config["scaling_factor"] - config["sd_scale_factor"]) > 1e-9:
            raise TrainingError(f"sd_scale_factor {config['sd_scale_factor']} differs from the VAE's "
                                f"scaling_factor {vae.config['scaling_factor']}")
        factor = 2 ** (len(vae.config["block_out_channels"]) - 1)
        if config["image_size"] % factor:
            raise TrainingError(f"image_size {config['image_size']} is not a multiple of the VAE's {factor}")
        try:
            loader = VideoLoader(folder, vae, image_size=config["image_size"], text_encoder=text_encoder, **common)
        except UserError:
            raise
        except ValueError as err:
            raise TrainingError(str(err)) from None
        check_image_labels(config, loader, folder)
        return loader, config["image_size"] // factor, vae.config["latent_channels"]
    cache = open_cache(folder)
    info = cache.info
    text = config["condition"] == "text"
    check_cache_fits(config, cache)
    try:
        loader = CacheLoader(folder, shuffle_window=config["shuffle_window"], on_corrupt=config["on_corrupt"],
                             captions=text, stream=stream, **common)
    except UserError:  # CorruptCache, CorruptTextEmbedding: already name the shards or files
        raise
    except ValueError as err:  # no clip fits, too few clips for a batch, too many workers
        message = str(err)
        raise TrainingError(message if message.startswith(folder) else f"{folder}: {message}") from None
    check_image_labels(config, loader, folder)
    return loader, info["image_size"] // info["downsample_factor"], info["latent_channels"]


# The parameters of each condition's path into the model (DiT's conditioning vector c = t + y or + text).
CONDITION_PREFIXES = {"class": "y_embedder.", "text": "text_embedding_projection."}


def with_fresh_condition(state, model, config):
    """Pretrained weights for a class or text run that have no condition path at all (an unconditional
    Latte, the usual start of a conditional fine-tune): that path starts at zero, so the run starts as
    the pretrained model (c is the timestep's embedding alone) and learns to read its labels or captions
    (their gradient is not zero). Weights with a condition path of their own are used as they are."""
    prefix = CONDITION_PREFIXES.get(config["condition"])
    if prefix is None or any(name.startswith(prefix) for name in state):
        return state
    fresh = {p.name: np.zeros(p.shape, np.float32) for p in model.get_parameters() if p.name.startswith(prefix)}
    logger.info("%s has no %s weights: the %s path starts at zero (the run starts as that model)",
                config["pretrained_model_path"], prefix.rstrip("."), config["condition"])
    return {**state, **fresh}


def build_model(config, latent_size, channels, pretrained=True, text_embed_dim=None):
    """The Latte the config names; with `pretrained`, started from pretrained_model_path if one is given
    (a resumed run takes every weight from its checkpoint instead). A text model projects
    `text_embed_dim`-wide caption embeddings (the data's: its encoder's width)."""
    check_model_keys(config)
    patch = LATTE_MODELS[config["model_name"]]["patch_size"]
    if latent_size % patch:
        raise TrainingError(f"image_size {config['image_size']} gives {latent_size}x{latent_size} latents, which "
                            f"{config['model_name']}'s {patch}x{patch} patches do not tile")
    overrides = {k: config[k] for k in ("depth", "hidden_size", "num_heads") if config[k] is not None}
    if config["condition"] == "text":
        overrides["text_embed_dim"] = text_embed_dim
    try:
        model = create_latte(config["model_name"], input_size=latent_size, in_channels=channels, **overrides,
                             num_frames=config["num_frames"], learn_sigma=config["learn_sigma"],
                             condition=config["condition"], num_classes=max(config["num_classes"], 1),
                             class_dropout_prob=config["class_dropout_prob"], patch_embedder=config["patch_embedder"],
                             enable_flash_attention=config["enable_flash_attention"])
    except ValueError as err:
        raise TrainingError(f"model_name {config['model_name']}: {err}") from None
    if pretrained and config["pretrained_model_path"]:
        load_weights(model, config["pretrained_model_path"], recompute=("pos_embed", "temp_embed"),
                     transform=lambda state: with_fresh_condition(
                         check_pretrained_text_width(state, config, text_embed_dim), model, config))
        logger.info("started from %s", config["pretrained_model_path"])
    if config["use_recompute"]:
        for block in model.blocks:
            block.recompute()
    if config["amp_level"] == "O2" and config["dtype"] != "fp32":
        ms.amp.auto_mixed_precision(model, "O2", dtype=ms.float16 if config["dtype"] == "fp16" else ms.bfloat16)
    model.set_train(True)
    return model


def build_step(config, model, diffusion, world):
    """(TrainStep, its updater, EMA or None) for the config."""
    params = model.trainable_params()
    ema = EMA(params, config["ema_decay"], warmup=config["ema_warmup"]) if config["use_ema"] else None
    scaler = None
    if config["amp_level"] == "O2" and config["dtype"] != "fp32":
        scaler = ms.amp.DynamicLossScaler(config["init_loss_scale"], config["loss_scale_factor"], config["scale_window"])
    reducer = nn.DistributedGradReducer(params, mean=True, degree=world) if world > 1 else None
    prefix = CONDITION_PREFIXES.get(config["condition"])
    condition_path = [p.name for p in params if prefix and p.name.startswith(prefix)]
    updater = Updater(params, learning_rate=config["start_learning_rate"], betas=tuple(config["betas"]),
                      eps=config["optim_eps"], weight_decay=config["weight_decay"],
                      max_grad_norm=config["max_grad_norm"] if config["clip_grad"] else None,
                      loss_scaler=scaler, ema=ema, grad_reducer=reducer,
                      scaled=condition_path, rate_scale=config["condition_lr_scale"])
    loss_class = {"class": ClassDiffusionLoss, "text": TextDiffusionLoss}.get(config["condition"], DiffusionLoss)
    loss_net = loss_class(model, diffusion, config["use_image_num"] or 0)
    return TrainStep(loss_net, updater, config["gradient_accumulation_steps"]), updater, ema


def _state_cells(model, updater):
    cells = [model, updater.optimizer]
    if updater.ema is not None:
        cells.append(updater.ema)
    if updater.loss_scaler is not None:
        cells.append(_ScalerCell(updater.loss_scaler))
    return cells


class _ScalerCell:
    """Exposes a DynamicLossScaler's two parameters (scale, good-step counter) like a cell's."""

    def __init__(self, scaler):
        self.scaler = scaler

    def get_parameters(self):
        return iter((self.scaler.scale_value, self.scaler.counter))


def _sampling_weights(model, ema):
    """{name: Parameter} of a plain Latte state dict: the EMA weights where there are any."""
    weights = {p.name: p for p in model.get_parameters()}
    if ema is not None:
        weights.update({p.name: s for p, s in zip(ema.params, ema.shadow)})
    return weights


# ------------------------------------------------------------------------------------------ the log
class RunLog:
    """OUTPUT/train_log.jsonl, one line per optimizer step. On resume, lines of steps after the
    checkpoint (done before a crash, redone now) are dropped so the log reads as one run."""

    def __init__(self, path, resume_step, enabled=True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if resume_step and os.path.exists(path):
            with open(path) as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        break  # a line cut by a kill
                    if record["step"] > resume_step:
                        break
                    kept.append(line if line.endswith("\n") else line + "\n")
        with open(path + ".tmp", "w") as handle:
            handle.writelines(kept)
        os.replace(path + ".tmp", path)

    def write(self, record):
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(strict_json_line(record) + "\n")  # a diverged loss: null

    def curve(self):
        with open(self.path) as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        return ([r["step"] for r in records], [math.nan if r["loss"] is None else r["loss"] for r in records],
                [r["lr"] for r in records],
                [r.get("loss_by_t_quartile") for r in records])  # runs before the split have none


class QuartileLosses:
    """An optimizer step's per-sample losses grouped by their timestep's quartile (t < T/4, ...): the loss
    curve's split, because the mean loss is dominated by the low-noise steps and hides the high-noise ones,
    where a sample's layout is decided. With msrun, rank 0's samples."""

    def __init__(self, num_timesteps):
        self.num_timesteps = num_timesteps
        self.sums, self.counts = np.zeros(4), np.zeros(4, np.int64)

    def add(self, timesteps, sample_losses):
        quartile = np.minimum(np.asarray(timesteps) * 4 // self.num_timesteps, 3)
        np.add.at(self.sums, quartile, sample_losses)
        np.add.at(self.counts, quartile, 1)

    def means(self):
        """Per quartile the mean loss, or None where no sample fell (strict JSON for the run log)."""
        return [float(total / count) if count else None for total, count in zip(self.sums, self.counts)]


# ------------------------------------------------------------------------------------------ the loop
def train(config, resume=False, progress=True, checked=None, sample=None):
    """Train (or resume) the run the config describes; returns a summary dict. `checked`: what
    preflight(config, resume) returned, when the caller ran it already (the CLI does, before it ingests
    a folder of videos). `sample(checkpoint_folder, step)`: what sample_interval runs on rank 0 (the CLI
    passes inference.sample.sampler_for_training's: sampling lives in a room this one does not import)."""
    if config["sample_interval"] and sample is None:
        raise TrainingError(f"sample_interval {config['sample_interval']}: no sampler was given to train(); "
                            f"`latte train` gives one (or set sample_interval: 0)")
    # Every check first (keys, checkpoints, data, model, the checkpoint's fit): a run that is refused
    # leaves its folder as it was.
    chosen, damaged, text_encoder = checked or preflight(config, resume)
    storage_options, config = config.get("storage_options"), redact_config(config)  # never in a JSON written
    rank, world = setup_devices(config)
    is_main = rank == 0
    out = os.path.abspath(config["output_path"])
    ckpt_root = os.path.join(out, "ckpt")

    loader, latent_size, channels = build_loader(config, rank, world, text_encoder, storage_options)
    identity = loader.text_encoder  # the TextEncoderIdentity of the caption embeddings, or None
    if chosen and text_encoder is None:  # a cache's encoder (one from videos was checked in preflight)
        check_resume_text_encoder(chosen, identity)
    model = build_model(config, latent_size, channels, pretrained=chosen is None,
                        text_embed_dim=identity and identity.width)
    diffusion = create_diffusion("", noise_schedule=config["noise_schedule"], learn_sigma=config["learn_sigma"],
                                 snr_gamma=config["snr_gamma"], predict_v=config["prediction_type"] == "v_prediction")
    step_fn, updater, ema = build_step(config, model, diffusion, world)
    loss_of_all_ranks = _rank_mean(world)
    accumulation = config["gradient_accumulation_steps"]
    steps_per_epoch = max(1, loader.batches_per_epoch // accumulation)
    max_steps = config["max_steps"] or config["epochs"] * steps_per_epoch
    save_every = config["ckpt_save_interval"] * (1 if config["step_mode"] else steps_per_epoch)

    step = 0
    if chosen:
        state = load_checkpoint(chosen, _state_cells(model, updater))
        try:
            loader.load_state_dict(state["loader"])
        except ValueError as err:
            raise ResumeError(f"{chosen}: {err}") from None
        step = state["step"]
        logger.info("resumed from %s (step %d, epoch %d)", chosen, step, loader.epoch)
    elif resume:
        logger.info("--resume: no checkpoint in %s yet, starting at step 0", ckpt_root)

    if is_main:  # the checks passed: now the run folder may change
        make_output_dir(out, "output_path")
        for folder, problem in damaged:
            logger.warning("%s set aside as %s", folder, set_aside(folder))
        remove_staging(ckpt_root)
        with open(os.path.join(out, "config.json"), "w") as handle:
            json.dump(config, handle, indent=1, sort_keys=True, allow_nan=False)
    params = sum(int(np.prod(p.shape)) for p in model.trainable_params())
    logger.info("rank %d/%d: %s (%.1fM parameters), latents %dx%d, %d frames + %d images, batch %d x %d "
                "accumulation x %d ranks, %d steps/epoch, amp %s %s, %s", rank, world, config["model_name"],
                params / 1e6, latent_size, latent_size, config["num_frames"], config["use_image_num"] or 0,
                config["train_batch_size"], accumulation, world, steps_per_epoch,
                config["amp_level"], config["dtype"], config["data_folder"])
    if identity:
        logger.info("caption embeddings of %s, width %d", identity, identity.width)

    log = RunLog(os.path.join(out, "train_log.jsonl"), step, enabled=is_main)
    bar = tqdm(total=max_steps, initial=step, unit="step", disable=not (progress and is_main))
    stream = _endless(loader)
    last_checkpoint = chosen
    frames_per_sample = config["num_frames"] + (config["use_image_num"] or 0)  # images count as frames
    deadline = time.perf_counter() + 60 * config["max_minutes"] if config["max_minutes"] else None
    try:  # the bar ends its line first, so an error stops the run on a line of its own
        while step < max_steps:
            started = time.perf_counter()
            lr = learning_rate(config, step, max_steps)
            updater.set_learning_rate(lr)
            losses, by_quartile = [], QuartileLosses(diffusion.num_timesteps)
            for _ in range(accumulation):  # the last micro-batch's call updates and returns norm and finite
                batch = next(stream)
                refuse_non_finite(batch, loader, step + 1, last_checkpoint)
                inputs = _step_inputs(batch, loader, config, diffusion.num_timesteps, Tensor)
                loss, norm, finite = step_fn(*inputs)
                losses.append(float(loss_of_all_ranks(loss).asnumpy()))
                by_quartile.add(inputs[1].asnumpy(), step_fn.sample_losses.asnumpy())
            finite, loss = bool(finite.asnumpy()), float(np.mean(losses))
            step += 1
            if not finite and updater.loss_scaler is None:
                raise TrainingError(f"step {step}: the loss or gradients are not finite (loss {loss}); the update was "
                                    f"not applied and nothing was saved; last good checkpoint: {last_checkpoint}")
            seconds = time.perf_counter() - started
            samples = config["train_batch_size"] * accumulation * world
            record = {"step": step, "epoch": loader.epoch, "loss": loss, "lr": lr, "grad_norm": float(norm.asnumpy()),
                      "loss_scale": float(updater.loss_scaler.scale_value.asnumpy()) if updater.loss_scaler else 1.0,
                      "skipped": not finite, "seconds": round(seconds, 4), "samples_per_s": round(samples / seconds, 3),
                      "frames_per_s": round(samples * frames_per_sample / seconds, 2),
                      "loss_by_t_quartile": by_quartile.means()}
            log.write(record)
            bar.update(1)
            if step % config["log_interval"] == 0:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            # every rank stops at the same step: the ranks' mean of "past the time limit"
            out_of_time = deadline is not None and float(
                loss_of_all_ranks(Tensor(float(time.perf_counter() > deadline), ms.float32)).asnumpy()) > 0
            sample_due = config["sample_interval"] and step % config["sample_interval"] == 0
            if step % save_every == 0 or step == max_steps or out_of_time or sample_due:
                last_checkpoint = _checkpoint(ckpt_root, step, model, updater, ema, loader, config, is_main, identity)
            if sample_due and is_main:  # the other ranks wait at the next step's all-reduce
                logger.info("step %d: samples in %s", step, sample(last_checkpoint, step)["output_path"])
            if out_of_time:
                logger.info("max_minutes %s reached at step %d: stopped with a checkpoint (--resume continues)",
                            config["max_minutes"], step)
                break
    finally:
        bar.close()
    curve = None
    if is_main:
        steps, losses, rates, quartiles = log.curve()
        curve = plot_loss_curve(steps, losses, os.path.join(out, "loss_curve.png"), f"{config['model_name']} loss",
                                learning_rates=rates, quartile_losses=quartiles)
    return {"output_path": out, "steps": step, "last_checkpoint": last_checkpoint, "loss_curve": curve,
            "rank": rank, "world_size": world}


def _rank_mean(world):
    """The logged loss is the mean over all ranks' samples (rank 0's alone would differ from a
    single-process run on the same global batch)."""
    if world == 1:
        return lambda loss: loss
    return MeanOverRanks(world)


def _endless(loader):
    while True:
        yield from loader


def refuse_non_finite(batch, loader, step, last_checkpoint):
    """A TrainingError naming the videos whose latents or caption embeddings in `batch` are not finite:
    a cache written before `latte cache` refused them (float16 stores inf past its range) would
    otherwise end the run at "loss nan" without saying where. A sample's frames are its clip's (the
    first num_frames), then one per image, as sample_videos names them."""
    columns = [name for name in ("latent", "caption_embedding", "caption_embedding_image") if name in batch]
    if all(np.isfinite(batch[name]).all() for name in columns):
        return
    bad, frames = [], loader.plan.num_frames
    for k, position in enumerate(batch["index"]):
        finite = np.isfinite(batch["latent"][k]).reshape(len(batch["latent"][k]), -1).all(axis=1)
        parts = np.concatenate([[finite[:frames].all()], finite[frames:]])  # the clip, then each image
        if "caption_embedding" in batch:
            parts[0] &= np.isfinite(batch["caption_embedding"][k]).all()
        if "caption_embedding_image" in batch:
            parts[1:] &= np.isfinite(batch["caption_embedding_image"][k]).reshape(len(parts) - 1, -1).all(axis=1)
        bad += [video for video, ok in zip(loader.sample_videos(position), parts) if not ok and video not in bad]
    folder = getattr(loader, "folder", None)  # a CacheLoader's; the uncached path encodes in float32
    where = (f"the cache {os.path.abspath(folder)} (written before latte cache refused such videos: re-run it into "
             f"a new folder, with --dtype float32 if its VAE passes float16's range)" if folder else "the VAE")
    raise TrainingError(f"step {step}: the batch holds non-finite latents or caption embeddings of video(s) "
                        f"{', '.join(bad)} from {where}; this step was not taken; last good checkpoint: "
                        f"{last_checkpoint or 'none yet'}")


def timestep_logit_normal(config):
    """(mean, std) of the run's logit-normal timestep draws, or None for uniform ones."""
    if config["timestep_sampling"] == "uniform":
        return None
    return config["timestep_logit_mean"], config["timestep_logit_std"]


def _step_inputs(batch, loader, config, num_timesteps, tensor):
    latent = batch["latent"]
    num_images = config["use_image_num"] or 0
    t, noise, drop, drop_image = diffusion_draws(
        batch["index"], loader.epoch, config["seed"], latent.shape[1:], num_timesteps,
        config["class_dropout_prob"] if config["condition"] in ("class", "text") else 0.0, num_images,
        config["frame_noise_correlation"], timestep_logit_normal(config))
    inputs = [tensor(latent), tensor(t), tensor(noise)]
    if config["condition"] == "class":
        labels = batch["label"]
        if (labels < 0).any() or (labels >= config["num_classes"]).any():
            raise TrainingError(f"class labels must be 0..{config['num_classes'] - 1} for every video; this batch has "
                                f"{sorted(set(labels.tolist()))} (-1: the video has no class)")
        inputs += [tensor(labels.astype(np.int32)), tensor(drop)]
        if num_images:  # both masks always given: the model never falls back to MindSpore's random state
            inputs += [tensor(batch["label_image"].astype(np.int32)), tensor(drop_image)]
    elif config["condition"] == "text":
        inputs.append(tensor(captions_with_dropout(batch, drop, drop_image, loader.null_caption_embedding)))
    return inputs


def captions_with_dropout(batch, drop, drop_image, null):
    """The text_embedding of a batch: (B, 77, D), or (B, 1 + I, 77, D) with images (the clip's caption
    embedding, then each image's); one whose drop (B,) / drop_image (B, I) decision is 1 is replaced by
    the empty prompt's, `null` (77, D)."""
    captions = np.where(drop.astype(bool)[:, None, None], null, batch["caption_embedding"])
    if "caption_embedding_image" not in batch:
        return captions
    images = np.where(drop_image.astype(bool)[:, :, None, None], null, batch["caption_embedding_image"])
    return np.concatenate([captions[:, None], images], axis=1)


def _checkpoint(ckpt_root, step, model, updater, ema, loader, config, is_main, text_encoder=None):
    folder = os.path.join(ckpt_root, f"step-{step:08d}")
    if is_main:
        state = {"step": step, "loader": loader.state_dict(), "config": config}
        if text_encoder:  # what `latte sample` encodes prompts with: {"path", "sha256"}
            state["text_encoder"] = text_encoder.record()
        save_checkpoint(ckpt_root, step, _state_cells(model, updater), _sampling_weights(model, ema), state,
                        config["ckpt_max_keep"])
    return folder

