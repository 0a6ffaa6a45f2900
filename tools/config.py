"""The key tables of the tools: `latte demo` (DEMO_KEYS) and every `latte bench` (BENCH_*_KEYS), apart
from the code that runs them so that the `latte` command reads them without loading MindSpore.
"""
from latte_core.keys import AT_LEAST_1, NON_NEGATIVE, NUMBER, OPTIONAL_STR, POSITIVE, SEED, Key, KeyTable, Range
from latte_toolkit.datasets.formats import FORMAT_NAMES
from latte_toolkit.pipelines.config import ConfigError

DEVICES = ("CPU", "GPU", "Ascend")

DEMO_KEYS = KeyTable([
    Key("out", str, "latte-demo", "folder for everything the demo makes (re-running resumes)"),
    Key("videos", int, 48, "procedural cloud clips to generate", range=AT_LEAST_1),
    Key("train_steps", int, 200, "training steps from the shipped Latte; 0: no cache or training, sample and "
                                 "check the shipped Latte as it is", range=NON_NEGATIVE),
    Key("sample_steps", (int, type(None)), None, "DPM-Solver++ steps of the samples; null: 20", range=AT_LEAST_1),
    Key("num_videos", (int, type(None)), None, "videos to sample; null: 16, or with text one per prompt of the "
                                               "demo's 20 (fewer: its first ones)", range=AT_LEAST_1),
    Key("seed", int, 0, "seed of the clips, the training run and the samples", range=SEED),
    Key("quality_clips", int, 64, "real clips the quality check compares the samples with (latte quality's "
                                  "--real-clips)", range=AT_LEAST_1),
    Key("text", bool, False, "the text-to-video demo: captioned clips, the shipped text encoder and text Latte, "
                             "one video per prompt and the prompt check"),
], {}, ConfigError)

KERNELS = Key("kernels", str, "both", "the CPU kernels of latte_core (on), MindSpore's own ops (off), or both "
                                      "paths in one run", ("on", "off", "both"))
DEVICE = Key("device", str, "CPU", "device", DEVICES)

BENCH_STEP_KEYS = KeyTable([
    Key("model_name", str, "Latte-S/2", "Latte variant"),
    Key("depth", (int, type(None)), None, "override the variant's block count (spatial + temporal, even); fewer "
                                          "blocks compile faster", range=AT_LEAST_1),
    Key("frames", int, 8, "frames per clip", range=AT_LEAST_1),
    Key("latent", int, 16, "latent height and width", range=AT_LEAST_1),
    Key("batch", int, 2, "clips per step", range=AT_LEAST_1),
    Key("steps", int, 5, "steps to run; the first (compile) is reported apart", range=Range(2)),
    Key("flash_attention", bool, False, "use the flash attention backend (fused on Ascend, block-wise elsewhere)"),
    Key("images", int, 0, "images appended to each clip (image-video joint training's use_image_num): the step "
                          "then runs on frames + images frames", range=NON_NEGATIVE),
    DEVICE, KERNELS,
], {}, ConfigError)

BENCH_FORWARD_KEYS = KeyTable([
    Key("model_name", str, "Latte-S/2", "Latte variant"),
    Key("frames", int, 16, "frames per video", range=AT_LEAST_1),
    Key("latent", int, 32, "latent height and width (32: 256-pixel frames)", range=AT_LEAST_1),
    Key("batch", int, 2, "videos per forward", range=AT_LEAST_1),
    Key("repeats", int, 3, "timed forwards after the compiling one", range=AT_LEAST_1),
    DEVICE, KERNELS,
], {}, ConfigError)

BENCH_VAE_KEYS = KeyTable([
    Key("size", int, 256, "frame height and width (a multiple of 8)", range=AT_LEAST_1),
    Key("batch", int, 4, "frames per encoder call", range=AT_LEAST_1),
    Key("repeats", int, 3, "timed encoder (and decoder) calls after the compiling one", range=AT_LEAST_1),
    Key("dtype", str, "float32", "compute dtype of convolutions and projections", ("float32", "float16")),
    DEVICE, KERNELS,
], {}, ConfigError)

BENCH_FVD_KEYS = KeyTable([
    Key("frames", int, 16, "frames per clip (at least 9)", range=Range(9, 4096)),
    Key("size", int, 256, "frame size of the random videos before the I3D's resize to 224", range=AT_LEAST_1),
    Key("batch", int, 4, "videos per I3D call", range=AT_LEAST_1),
    Key("repeats", int, 3, "timed calls after the compiling one", range=AT_LEAST_1),
    DEVICE,
], {}, ConfigError)

BENCH_INGEST_KEYS = KeyTable([
    Key("sources", list, None, "inputs to ingest (as for `latte ingest`)"),
    Key("workers", int, 0, "ingest workers (0: in this process, one decode child, i.e. one core)",
        range=NON_NEGATIVE),
    Key("replan_inputs", int, 10000, "also time re-planning a finished run over this many synthetic inputs "
                                     "(0: skip)", range=NON_NEGATIVE),
    Key("keyframe_frames", int, 0, "also time ingest's keyframe check (frame size and pixel format across the "
                                   "stream) on a synthetic H.264 of this many frames, made with PyAV (0: skip)",
        range=NON_NEGATIVE),
    Key("keyframe_size", int, 64, "that video's frame size (even)", range=Range(16)),
    Key("repeats", int, 3, "probes of that video with and without the check, alternated (medians)",
        range=AT_LEAST_1),
], {}, ConfigError)

BENCH_CURATE_KEYS = KeyTable([
    Key("sources", (list, type(None)), None, "inputs to ingest and curate (null: write `videos` 640x360 H.264 "
                                             "clips of drifting textures, one hard cut each)"),
    Key("videos", int, 4, "videos to write when no sources are given", range=AT_LEAST_1),
    Key("frames", int, 120, "frames per written video", range=Range(2)),
    Key("height", int, 360, "height of the written videos (even)", range=Range(2)),
    Key("width", int, 640, "width of the written videos (even)", range=Range(2)),
    Key("workers", int, 0, "curate workers (0: in this process, one core, as the decode it is compared with)",
        range=NON_NEGATIVE),
    Key("repeats", int, 3, "decode and curate runs, interleaved (the medians are reported)", range=AT_LEAST_1),
], {}, ConfigError)

BENCH_CACHE_KEYS = KeyTable([
    Key("format", str, "numpy", "shard format", FORMAT_NAMES),
    Key("vae", OPTIONAL_STR, None, "diffusers VAE folder (null: a random-weight VAE of sd-vae-ft-mse's "
                                   "architecture)"),
    Key("videos", int, 2, "synthetic H.264 clips to cache", range=AT_LEAST_1),
    Key("frames", int, 16, "frames per clip", range=AT_LEAST_1),
    Key("size", int, 256, "cached frame size", range=AT_LEAST_1),
    Key("micro_batch", int, 8, "frames per VAE call", range=AT_LEAST_1),
    Key("text_encoder", OPTIONAL_STR, None, "also time the job with and without caption embeddings (a caption of "
                                            "its own per video): clip-l (random weights, CLIP ViT-L/14's text "
                                            "tower: width 768, 12 layers, 12 heads), small (random: 64, 4, 4) or "
                                            "a text-encoder folder"),
    Key("repeats", int, 3, "with text_encoder or out: timed jobs of each kind, interleaved after an untimed pair "
                           "(medians)", range=AT_LEAST_1),
    Key("out", OPTIONAL_STR, None, "also time the job into this object-store prefix (s3://bucket/bench) or folder "
                                   "against the job into a local folder, and the loader of each (the store's "
                                   "warm); the runs' caches are deleted after"),
    Key("storage_options", (dict, type(None)), None, "options of the fsspec driver of `out` (default: the driver's "
                                                     "own: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws)"),
], {}, ConfigError)

BENCH_LOADER_KEYS = KeyTable([
    Key("cache", OPTIONAL_STR, None, "cache folder to read (null: a synthetic cache of random latents, written first)"),
    Key("synthetic_gb", NUMBER, 1.0, "without a cache: size of the synthetic cache", range=POSITIVE),
    Key("format", str, "numpy", "format of the synthetic cache", FORMAT_NAMES),
    Key("batch", int, 4, "clips per batch", range=AT_LEAST_1),
    Key("num_frames", int, 16, "frames per clip", range=AT_LEAST_1),
    Key("sample_stride", int, 1, "frame stride within a clip", range=AT_LEAST_1),
    Key("workers", int, 2, "loader num_parallel_workers", range=AT_LEAST_1),
    Key("max_batches", int, 0, "stop after this many batches (0: one epoch)", range=NON_NEGATIVE),
    Key("check", str, "full", "shard check when the loader starts (sha256 or sizes against the ledger)",
        ("full", "size")),
    Key("posterior", str, "sample", "latents drawn from the cached posterior, or its mean (reads only the mean)",
        ("sample", "mean")),
    Key("images", int, 0, "the loader's use_image_num: single frames of other videos appended to each clip (each a "
                          "random frame of a random other video)", range=NON_NEGATIVE),
], {}, ConfigError)

BENCH_ATTENTION_KEYS = KeyTable([
    Key("tokens", int, 16384, "sequence length (one head group)", range=AT_LEAST_1),
    Key("head_dim", int, 64, "head size", range=AT_LEAST_1),
    Key("block_size", int, 512, "key block of the block-wise path", range=AT_LEAST_1),
], {}, ConfigError)

BENCH_SAMPLER_KEYS = KeyTable([
    Key("checkpoint", OPTIONAL_STR, None, "the Latte to sample (a run, a ckpt/step-N folder or weights; default: the shipped "
        "pretrained/latte-clouds)"),
    Key("vae", OPTIONAL_STR, None, "the VAE that decodes its latents (default: the shipped pretrained/vae-clouds)"),
    Key("videos", int, 64, "videos per sampler (seeds 0..videos-1, the same initial noise for both) and real clips",
        range=Range(2, 4096)),
    Key("fast_steps", int, 20, "DPM-Solver++ steps", range=Range(1, 1000)),
    Key("reference_steps", int, 250, "DDPM steps (the reference sampler)", range=Range(1, 1000)),
    Key("batch", int, 16, "videos per sampling batch", range=AT_LEAST_1),
    Key("work", OPTIONAL_STR, None, "a new folder that keeps the samples, real clips and their ingest (default: a "
        "temporary one)"),
], {}, ConfigError)

BENCH_LEARN_KEYS = KeyTable([
    Key("rung", str, "all", "a rung of the learning ladder (memorise, shuffled-control, class-colour, "
        "unconditional-motion, text-colour, text-direction) or all"),
    Key("budget_minutes", NUMBER, 10.0, "wall budget of each rung, its clips and sampling included; training "
        "takes as many of the rung's steps as fit", range=Range(0.0, 24 * 60.0, low_open=True)),
    Key("work", str, "latte-ladder", "folder of the rungs' clips, caches, runs and samples (re-running resumes)"),
    Key("steps", (int, type(None)), None, "at most this many training steps per rung (null: the rung's own, 1500: the budget ends a rung first on a 2-core CPU)",
        range=AT_LEAST_1),
], {}, ConfigError)
