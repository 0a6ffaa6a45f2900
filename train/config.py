"""The training keys: `TRAIN_KEYS` uses MindONE's Latte key names; `TRAIN_VAE_KEYS` are `latte
train-vae`'s. Both are KeyTables (latte_core/keys.py).
"""
from latte_core.errors import UserError, bounded
from latte_core.keys import AT_LEAST_1, NON_NEGATIVE, NUMBER, OPTIONAL_STR, POSITIVE, SEED, UNIT, Key, KeyTable, Range
from latte_core.samplers import NOISE_SCHEDULES
from latte_toolkit.datasets.formats import FORMAT_NAMES


class TrainConfigError(UserError):
    pass


KEYS = [
    # task and model
    Key("condition", (str, type(None)), None, "null (unconditional), class (labels from the data) or text (caption "
                                              "embeddings: the cache's, or text_encoder's from videos)",
        (None, "class", "text")),
    Key("num_classes", int, 0, "classes of a class-conditional model (labels come from the data)", range=NON_NEGATIVE),
    Key("class_dropout_prob", NUMBER, 0.1, "label (class) or caption (text: to the empty prompt's embedding) dropout "
                                           "for classifier-free guidance, drawn per sample and per image", range=UNIT),
    Key("model_name", str, "Latte-XL/2", "variant: Latte-S/2 ... Latte-XL/8"),
    Key("depth", (int, type(None)), None, "override the variant's block count (spatial + temporal), e.g. for a "
                                          "small model", range=AT_LEAST_1),
    Key("hidden_size", (int, type(None)), None, "override the variant's width", range=AT_LEAST_1),
    Key("num_heads", (int, type(None)), None, "override the variant's attention heads (must divide the width)",
        range=AT_LEAST_1),
    Key("image_size", int, 256, "frame size in pixels (latents are image_size / 8, or the cache's)",
        range=AT_LEAST_1),
    Key("num_frames", int, 16, "frames per training clip", range=AT_LEAST_1),
    Key("learn_sigma", bool, True, "predict the variance too (2x output channels), as the reference"),
    Key("patch_embedder", str, "conv", "conv or linear (MindONE's choice for bf16 on Ascend)", ("conv", "linear")),
    Key("enable_flash_attention", bool, False,
        "fused flash attention on Ascend; block-wise attention (linear memory) elsewhere"),
    Key("use_recompute", bool, False, "recompute every transformer block in the backward pass (less memory)"),
    Key("pretrained_model_path", str, "", "start from these weights (.ckpt/.safetensors/.pt; sin-cos tables "
                                            "are recomputed for this model's size)", resume_may_change=True),
    Key("vae_checkpoint", str, "", "VAE for training from videos: a diffusers folder, or a .ckpt of "
                                     "sd-vae-ft-mse's architecture (latte convert vae)"),
    Key("text_encoder", str, "", "condition text from videos (train_data_type video_file): the CLIP text-encoder "
                                 "folder that encodes the manifest's captions (a cache brings its own: the one "
                                 "`latte cache --text-encoder` used); recorded in each checkpoint's state.json",
        resume_may_change=True),
    Key("sd_scale_factor", NUMBER + (type(None),), None, "latent scaling factor; null: the VAE's (or the cache's); "
                                                         "a value must match it", range=POSITIVE),
    Key("dtype", str, "fp32", "compute dtype under amp_level O2: fp16, or bf16 (Ascend only)", ("fp32", "fp16", "bf16")),
    Key("amp_level", str, "O2", "O0: float32 everywhere; O2: the network in `dtype`, a dynamic loss scale",
        ("O0", "O2")),
    # data
    Key("dataset_name", str, "sky", "a name for the logs", resume_may_change=True),
    Key("data_config_file", str, "", "YAML whose data_config: section holds the data keys below",
        resume_may_change=True),
    Key("data_folder", str, "", "a cache folder (latte cache), an ingest folder, or a folder of videos / frame "
                                  "folders (ingested into output_path/ingest first)", resume_may_change=True),
    Key("storage_options", (dict, type(None)), None, "options of the fsspec driver when data_folder is an s3:// (or "
                                                     "other) URL, e.g. {endpoint_url: ..., key: ..., secret: ...}; "
                                                     "default: the driver's own (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                                                     "~/.aws); never logged, redacted in config.json and state.json",
        resume_may_change=True),
    Key("cache_limit_gb", (int, float, type(None)), None, "data_folder in an object store: the local cache of its "
                                                            "shards per rank, in GB (null: no limit); at least "
                                                            "(shuffle_window + prefetch_shards) x the largest shard",
        range=POSITIVE, resume_may_change=True),
    Key("prefetch_shards", int, 2, "data_folder in an object store: shards fetched ahead of the shuffle window",
        range=NON_NEGATIVE, resume_may_change=True),
    Key("train_data_type", str, "numpy", "video_file (decode + VAE on the fly) or the cache's format",
        ("video_file",) + FORMAT_NAMES),
    Key("sample_stride", int, 1, "frame stride within a clip", range=AT_LEAST_1),
    Key("clips_per_video", int, 1, "random clips drawn from each video per epoch", range=AT_LEAST_1),
    Key("shuffle", bool, True, "shuffle clips (within windows of shuffle_window shards)"),
    Key("shuffle_window", int, 4, "shards whose clips are shuffled together (the bounded shuffle buffer)",
        range=AT_LEAST_1),
    Key("num_parallel_workers", int, 1, "loader threads", range=AT_LEAST_1, resume_may_change=True),
    Key("posterior", str, "sample", "latents from the cached posterior: a fresh sample per epoch (mean + std·noise), "
                                      "or its mean (for VAEs whose posterior noise swamps the signal)",
        ("sample", "mean")),
    Key("on_corrupt", str, "skip", "a shard that disagrees with the ledger: skip it (reported) or raise",
        ("skip", "raise"), resume_may_change=True),
    Key("max_rowsize", (int, type(None)), None, "MindONE's shared-memory size for process workers: no effect "
                                                  "here (the loader uses threads); reported", resume_may_change=True),
    Key("use_safer_augment", bool, False, "MindONE option; not supported (must be false)"),
    Key("image_video_joint", bool, False, "image-video joint training (Latte + IMG): each clip gets use_image_num "
                                          "frames of other videos appended, which the spatial blocks see and the "
                                          "temporal ones skip; the loss is the mean over all num_frames + "
                                          "use_image_num frames"),
    Key("use_image_num", (int, type(None)), None, "images per clip with image_video_joint (each a random frame of "
                                                  "a random other video, with its own label; null or 0 without)",
        range=NON_NEGATIVE),
    Key("dataset_sink_mode", bool, False, "sink the data to the device (Ascend); on CPU it cannot act: reported",
        resume_may_change=True),
    # optimisation
    Key("start_learning_rate", NUMBER, 1e-4, "peak learning rate", range=POSITIVE),
    Key("end_learning_rate", NUMBER, 0.0, "final learning rate of cosine_decay", range=NON_NEGATIVE),
    Key("scheduler", str, "constant", "constant or cosine_decay, after warmup_steps of linear warm-up",
        ("constant", "cosine_decay")),
    Key("warmup_steps", int, 0, "optimizer steps of linear warm-up from 0", range=NON_NEGATIVE),
    Key("decay_steps", int, 0, "optimizer steps of the cosine decay (0: until the last step)", range=NON_NEGATIVE),
    Key("train_batch_size", int, 5, "clips per micro-batch on each device", range=AT_LEAST_1),
    Key("gradient_accumulation_steps", int, 1, "micro-batches summed into one optimizer step", range=AT_LEAST_1),
    Key("snr_gamma", NUMBER + (type(None),), None, "Min-SNR-gamma loss weighting, e.g. 5.0: each timestep's MSE "
        "times min(SNR, gamma) / SNR (null: unweighted, as the reference)", range=POSITIVE),
    Key("frame_noise_correlation", NUMBER, 0.0, "correlation between the video frames of the training noise, "
        "e.g. 0.5 (PYoCo's mixed noise; each value stays N(0, 1)); sampling a checkpoint of the run uses the same "
        "(0: independent, as the reference)", range=Range(0.0, 1.0, high_open=True)),
    Key("prediction_type", str, "epsilon", "what the model predicts: epsilon (the reference) or v_prediction "
        "(v = sqrt(alpha_bar)*noise - sqrt(1 - alpha_bar)*x0; its x0 estimate stays bounded at high noise, where "
        "a video's layout and motion are decided); sampling a checkpoint of the run uses the same",
        ("epsilon", "v_prediction")),
    Key("timestep_sampling", str, "uniform", "how training draws each clip's timestep: uniform (the reference) or "
        "logit_normal (T·sigmoid(timestep_logit_mean + timestep_logit_std·z), Esser et al. 2024: more steps at the "
        "middle noise levels, where a clip's layout and motion are made)", ("uniform", "logit_normal")),
    Key("timestep_logit_mean", NUMBER, 0.0, "logit_normal's mean: 0 centres the draws on T/2, -0.4 on 0.4·T",
        range=Range(-5.0, 5.0)),
    Key("timestep_logit_std", NUMBER, 1.0, "logit_normal's spread (1: two thirds of the draws within 0.27-0.73 of "
        "T at mean 0)", range=Range(0.1, 5.0)),
    Key("noise_schedule", str, "linear", "the betas: linear (the reference's) or squaredcos_cap_v2 (Nichol & Dhariwal's "
        "cosine: more of the timesteps at noise levels where a small latent still shows its layout); sampling a "
        "checkpoint of the run uses the same", NOISE_SCHEDULES),
    Key("condition_lr_scale", NUMBER, 1.0, "learning rate of the condition path (the class table y_embedder, or the "
        "caption projection text_embedding_projection) as a multiple of the model's, e.g. 10 for a class run from "
        "unconditional weights: Adam moves each entry of a class table by about the rate per step, so a class's "
        "conditioning vector moves that much, where a caption projection's moves up to the rate times its ~2,500 "
        "inputs (pretrained/EXPERIMENTS.md #30) (1: one rate, as the reference)",
        range=Range(0, 1000, low_open=True)),
    Key("weight_decay", NUMBER, 0.0, "decoupled weight decay (AdamW)", range=NON_NEGATIVE),
    Key("betas", list, [0.9, 0.999], "Adam betas"),
    Key("optim_eps", NUMBER, 1e-8, "Adam epsilon", range=POSITIVE),
    Key("clip_grad", bool, False, "clip the gradients' global norm to max_grad_norm"),
    Key("max_grad_norm", NUMBER, 0.1, "clipping threshold", range=POSITIVE),
    Key("use_ema", bool, True, "keep an exponential moving average of the weights"),
    Key("ema_decay", NUMBER, 0.9999, "EMA decay per optimizer step", range=UNIT),
    Key("ema_warmup", bool, False, "grow the EMA decay as min(ema_decay, (1 + n) / (10 + n)) after n updates "
        "(diffusers' and timm's warmup; false: ema_decay from the first step, as the reference, so a run of "
        "a few hundred steps keeps most of its initial weights in the EMA it samples with)"),
    Key("init_loss_scale", NUMBER, 65536.0, "initial dynamic loss scale (amp_level O2)", range=POSITIVE),
    Key("loss_scale_factor", int, 2, "the loss scale is divided by this on overflow, multiplied after "
                                            "scale_window good steps", range=Range(2)),
    Key("scale_window", int, 1000, "good steps before the loss scale grows", range=AT_LEAST_1),
    Key("epochs", int, 3000, "epochs to train (max_steps stops earlier)", range=AT_LEAST_1, resume_may_change=True),
    Key("max_steps", (int, type(None)), None, "optimizer steps to train", range=AT_LEAST_1, resume_may_change=True),
    Key("max_minutes", (int, float, type(None)), None, "stop with a checkpoint once this process has trained "
        "this many minutes (a cluster job's time limit, the learning ladder's budget; --resume continues); "
        "null: no limit", range=POSITIVE, resume_may_change=True),
    Key("seed", int, 42, "seed of the initial weights, the loader and the diffusion noise",
        range=SEED),
    # run
    Key("output_path", str, "outputs/train", "run folder: config, log, checkpoints, loss curve",
        resume_may_change=True),
    Key("log_interval", int, 1, "optimizer steps between updates of the progress bar's loss and lr (train_log.jsonl "
                                 "gets every step)", range=AT_LEAST_1, resume_may_change=True),
    Key("ckpt_save_interval", int, 50, "epochs (or steps with step_mode) between checkpoints", range=AT_LEAST_1,
        resume_may_change=True),
    Key("step_mode", bool, False, "ckpt_save_interval counts optimizer steps instead of epochs",
        resume_may_change=True),
    Key("ckpt_max_keep", int, 3, "checkpoints kept (the oldest are deleted)", range=AT_LEAST_1,
        resume_may_change=True),
    Key("sample_interval", int, 0, "optimizer steps between sets of samples of the run so far (`latte train` "
        "only): a checkpoint at that step, then sample_num_videos videos from its EMA weights (DPM-Solver++, 20 "
        "steps; a text model samples the data's first distinct captions, a class model its classes in turn) "
        "decoded by sample_vae into OUTPUT/samples/step-N; 0: off", range=NON_NEGATIVE, resume_may_change=True),
    Key("sample_num_videos", int, 4, "videos in each set of samples of sample_interval", range=AT_LEAST_1,
        resume_may_change=True),
    Key("sample_vae", OPTIONAL_STR, None, "the VAE folder (diffusers) that decodes the samples of "
        "sample_interval: the data's VAE (a cache's must match its recorded sha256)", resume_may_change=True),
    Key("on_bad_checkpoint", str, "previous", "--resume with a newest checkpoint whose files fail their sha256 "
                                              "check: warn and resume from the newest good one, or stop",
        ("previous", "stop"), resume_may_change=True),
    Key("use_parallel", bool, False, "data-parallel over the processes msrun started", resume_may_change=True),
    Key("device_target", str, "CPU", "CPU, GPU or Ascend", ("CPU", "GPU", "Ascend"), resume_may_change=True),
]
ALIASES = {"use_model_dtype": "dtype", "output_dir": "output_path", "cache_folder": "data_folder"}


def validate(values):
    """Checks across keys, and MindONE keys whose features this toolkit does not have (each key's own
    type, choices and range are checked by the table as it reads the value)."""
    betas = values["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                  for b in betas):
        raise TrainConfigError(f"betas must be two numbers in [0, 1), got {bounded(values['betas'])}")
    if values["condition"] == "class" and values["num_classes"] < 1:
        raise TrainConfigError("condition: class needs num_classes >= 1")
    if values["condition_lr_scale"] != 1 and values["condition"] is None:
        raise TrainConfigError(f"condition_lr_scale {values['condition_lr_scale']:g} scales the rate of a class or "
                               f"text path; an unconditional run (condition: null) has none: remove it")
    if values["text_encoder"] and values["condition"] != "text":
        raise TrainConfigError(f"text_encoder {bounded(values['text_encoder'])} is for condition: text (condition is "
                               f"{values['condition']}); remove it")
    if values["condition"] == "text":
        from_videos = values["train_data_type"] == "video_file"
        if from_videos and not values["text_encoder"]:
            raise TrainConfigError("condition: text with train_data_type video_file needs text_encoder: the CLIP "
                                   "text-encoder folder that encodes the videos' captions")
        if values["text_encoder"] and not from_videos:
            raise TrainConfigError(f"text_encoder {bounded(values['text_encoder'])} is for training from videos; a "
                                   f"{values['train_data_type']} cache holds the caption embeddings of the encoder "
                                   f"it was made with: remove text_encoder")
    if values["use_safer_augment"]:
        raise TrainConfigError("use_safer_augment is not supported: set it to false")
    if values["image_video_joint"] != bool(values["use_image_num"]):
        raise TrainConfigError(f"image_video_joint {values['image_video_joint']} with use_image_num "
                               f"{values['use_image_num']}: joint training needs both image_video_joint: true and "
                               f"use_image_num >= 1 (video only: false and null or 0)")
    if values["sample_interval"] and not values["sample_vae"]:
        raise TrainConfigError(f"sample_interval {values['sample_interval']} needs sample_vae: the VAE folder that "
                               f"decodes the samples (the one the data was cached with)")
    if not values["data_folder"]:
        raise TrainConfigError("data_folder is empty: give a cache folder (or --cache)")


TRAIN_KEYS = KeyTable(KEYS, ALIASES, TrainConfigError, validate)


def load_train_config(path=None, overrides=None):
    """{key: value} for every training key: defaults < config file < overrides, then checked."""
    return TRAIN_KEYS.load(path, overrides)


TRAIN_VAE_KEYS = KeyTable([
    Key("manifest", str, None, "ingest folder (or its manifest.parquet) whose frames to learn"),
    Key("out", str, None, "new diffusers VAE folder"),
    Key("image_size", int, 64, "frame size in pixels (the crop rule)", range=AT_LEAST_1),
    Key("block_out_channels", list, [32, 64, 64], "channels per level; n levels downsample by 2^(n-1)"),
    Key("layers_per_block", int, 1, "ResNet blocks per level", range=AT_LEAST_1),
    Key("norm_num_groups", int, 16, "GroupNorm groups", range=AT_LEAST_1),
    Key("latent_channels", int, 4, "channels of the latent", range=AT_LEAST_1),
    Key("steps", int, 2000, "optimizer steps", range=AT_LEAST_1),
    Key("batch_size", int, 16, "frames per step", range=AT_LEAST_1),
    Key("learning_rate", NUMBER, 1e-3, "learning rate (after 100 warm-up steps)", range=POSITIVE),
    Key("kl_weight", NUMBER, 1e-3, "weight of the KL term (per latent element)", range=NON_NEGATIVE),
    Key("seed", int, 0, "seed of the initial weights and the batches", range=SEED),
    Key("init_vae", OPTIONAL_STR, None, "a VAE folder to start from (a fine-tune): its architecture replaces "
        "the architecture keys above"),
    Key("decoder_only", bool, False, "train only init_vae's decoder: its encoder, latents and scaling_factor stay "
        "as they were, so caches and Latte weights made with it stay valid"),
], {}, TrainConfigError)
