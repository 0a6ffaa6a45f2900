"""The checks of `latte train` that run before anything is written (train/loop.py calls them; the
command line runs preflight() before it ingests a folder of videos): device limits, the model keys,
the text encoder of a run from videos, the run folder's checkpoints and, on --resume, the settings and
encoder the checkpoint was trained with; then, once the data and the model are read, the cache's fit,
the images' labels and the pretrained text projection's width. A refused run leaves its folder as it was.
"""
import logging
import os

from latte_core.atomic import make_output_dir
from latte_core.errors import UserError
from latte_core.latte import DEPTH_RULE, LATTE_MODELS, TEXT_TOKENS
from latte_core.text_encoder import load_text_encoder

from .checkpoint import ResumeError, checkpoint_dirs, read_state, select_checkpoint
from .config import TRAIN_KEYS

logger = logging.getLogger(__name__)


class TrainingError(UserError):
    pass


def report_device_limits(config):
    """Keys that cannot act on this device: stop for those that would change the numbers, say so for the rest."""
    device = config["device_target"]
    if config["amp_level"] == "O2" and config["dtype"] == "bf16" and device != "Ascend":
        raise TrainingError(f"dtype bf16 needs Ascend: MindSpore has no bf16 MatMul/LayerNorm on {device}; "
                            f"use dtype fp16 or fp32")
    if config["dataset_sink_mode"] and device != "Ascend":
        logger.warning("dataset_sink_mode: True cannot act on %s (sinking needs Ascend); batches are fed "
                       "step by step", device)
    if config["max_rowsize"] is not None:
        logger.warning("max_rowsize has no effect here: the loader uses threads, not shared-memory processes")
    if config["enable_flash_attention"] and device != "Ascend":
        logger.info("enable_flash_attention on %s: block-wise attention (linear memory), not the fused kernel",
                    device)


def check_model_keys(config):
    """The model keys against each other, before anything is loaded or written: the variant exists, and
    its block count, width and heads (the variant's unless overridden) can build a Latte."""
    name = config["model_name"]
    if name not in LATTE_MODELS:
        raise TrainingError(f"unknown model_name {name!r}; choose one of {', '.join(LATTE_MODELS)}")

    def value(key):
        given = config[key]
        return (given, key) if given is not None else (LATTE_MODELS[name][key], f"{key} (the {name} default)")

    (depth, depth_key), (width, width_key), (heads, heads_key) = map(value, ("depth", "hidden_size", "num_heads"))
    if depth % 2:
        raise TrainingError(f"{depth_key} {depth}: {DEPTH_RULE}")
    if width % 4:
        raise TrainingError(f"{width_key} {width} must be a multiple of 4 (the 2-D sin-cos position table)")
    if width % heads:
        divisors = ", ".join(str(h) for h in range(1, min(width, 64) + 1) if width % h == 0)
        raise TrainingError(f"{heads_key} {heads} does not divide the width, {width_key} {width}: choose "
                            f"num_heads among {divisors}")


def check_resume_config(stored, config, folder):
    """A resumed run must be the run its checkpoint was trained in: every key but the run-control ones
    (Key.resume_may_change: max_steps, output_path, ckpt_* ...) must be as it was. Keys the checkpoint's
    config lacks (added to the table since) count as their defaults."""
    changed = [(key.name, stored.get(key.name, key.default), config[key.name]) for key in TRAIN_KEYS.keys
               if not key.resume_may_change and stored.get(key.name, key.default) != config[key.name]]
    if changed:
        raise ResumeError(f"--resume: {folder} was trained with other settings: "
                          + ", ".join(f"{name} {was!r} (now {now!r})" for name, was, now in changed)
                          + "; resume with the run's values, or start a new run in another output_path")


def run_text_encoder(config):
    """The TextEncoder of a text run from videos (its text_encoder key, loaded whole), or None; a fault of
    the folder is a TextEncoderError naming the key and the file."""
    if config["condition"] != "text" or config["train_data_type"] != "video_file":
        return None
    return load_text_encoder(config["text_encoder"])


def check_resume_text_encoder(checkpoint, identity):
    """A text run resumes with the encoder its checkpoint recorded, compared by sha256 (the folder may
    have moved; another encoder's embeddings would mean other things to the trained projection).
    `identity`: the TextEncoderIdentity of this run's caption embeddings, or None."""
    if identity is None:
        return
    recorded = read_state(checkpoint).get("text_encoder")
    if not isinstance(recorded, dict) or recorded.get("sha256") != identity.sha256:
        was = (f"{recorded.get('path')} (sha256 {recorded.get('sha256')})" if isinstance(recorded, dict)
               else "no text encoder")
        raise ResumeError(f"--resume: {checkpoint} was trained with {was}, this run's caption embeddings come from "
                          f"{identity}; resume with that run's encoder (and its cache), or start a new run in "
                          f"another output_path")


def check_cache_fits(config, cache):
    """A cache trains this run: its format, image size and scaling factor are the config's, and a text
    run's cache holds caption embeddings."""
    folder, info = config["data_folder"], cache.info
    if config["condition"] == "text" and not cache.has_text:
        raise TrainingError(f"{folder}: condition: text needs caption embeddings, and this cache holds none (made "
                            f"without --text-encoder); run latte cache --text-encoder DIR into a new folder")
    if info["format"] != config["train_data_type"]:
        raise TrainingError(f"{folder} is a {info['format']} cache, but train_data_type is {config['train_data_type']}")
    for key, mine in (("image_size", config["image_size"]), ("scaling_factor", config["sd_scale_factor"])):
        if mine is not None and abs(info[key] - mine) > 1e-9:
            raise TrainingError(f"{folder} was cached with {key} {info[key]}, the config says {mine}")


def check_image_labels(config, loader, folder):
    """A class-conditional joint run takes images, with their labels, from every video of the data: each
    needs a class (a video-only run meets an unlabelled clip in its first batch; here that is decided
    before anything is written)."""
    if config["condition"] != "class" or not loader.use_image_num:
        return
    bad = [e["video_id"] for e in loader.image_entries
           if e["label"] is None or not 0 <= e["label"] < config["num_classes"]]
    if bad:
        raise TrainingError(f"{folder}: condition class with use_image_num {loader.use_image_num} needs a class "
                            f"label 0..{config['num_classes'] - 1} for every video (images come from any video), "
                            f"but {len(bad)} of {len(loader.image_entries)} have none or another ({bad[0]!r} ...)")


def check_pretrained_text_width(state, config, text_embed_dim):
    """Pretrained text weights must project embeddings of the data's width (named, before any other misfit)."""
    projection = state.get("text_embedding_projection.1.weight")
    if config["condition"] == "text" and projection is not None and projection.shape[-1] != TEXT_TOKENS * text_embed_dim:
        raise TrainingError(f"pretrained_model_path {config['pretrained_model_path']}: its text projection takes "
                            f"{projection.shape[-1] / TEXT_TOKENS:g}-wide caption embeddings, the data's text encoder "
                            f"makes {text_embed_dim}-wide ones")
    return state


def preflight(config, resume):
    """The checks that need no latents: device limits, model keys, the text encoder of a text run from
    videos (loaded), and the run folder's checkpoints (refused without --resume; with it, the checkpoint
    to resume, its settings and its encoder against these). Returns (checkpoint to resume or None,
    damaged checkpoints set aside, the TextEncoder or None). Writes nothing."""
    report_device_limits(config)
    check_model_keys(config)
    out = make_output_dir(config["output_path"], "output_path", create=False)  # before any work; writes nothing
    text_encoder = run_text_encoder(config)
    existing = checkpoint_dirs(os.path.join(out, "ckpt"))
    if existing and not resume:
        raise TrainingError(f"{out} already holds checkpoints ({os.path.basename(existing[-1])}); pass --resume to "
                            f"continue that run, or choose another output_path")
    if not (resume and existing):
        return None, [], text_encoder
    chosen, damaged = select_checkpoint(existing, config["on_bad_checkpoint"])
    check_resume_config(read_state(chosen).get("config") or {}, config, chosen)
    if text_encoder is not None:
        check_resume_text_encoder(chosen, text_encoder.identity)
    return chosen, damaged, text_encoder
