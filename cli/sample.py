"""`latte sample`: videos from Latte weights."""
import click

from latte_core.samplers import SAMPLERS
from latte_toolkit.inference.config import SAMPLE_KEYS

from . import IntList, configured, key_option, main, setup_mindspore


@main.command()
@configured(
    SAMPLE_KEYS,
    key_option("checkpoint", help="Latte weights (.pt/.ckpt/.safetensors) or a run's ckpt/step-N folder."),
    key_option("vae_checkpoint", "--vae", help="VAE: diffusers folder or .ckpt."),
    key_option("sampler", help="Sampler [ddpm; ddim with the config's ddim_sampling: true]; wins over ddim_sampling."),
    key_option("sampling_steps", "--steps", help="Sampling steps [the sampler's: " + ", ".join(
        f"{name} {sampler.default_steps}" for name, sampler in SAMPLERS.items()) + "]."),
    key_option("ddim_eta", "--eta", help="DDIM eta [0]."),
    key_option("guidance_scale", "--cfg-scale", help="Classifier-free guidance scale (class and text models) [1: none]."),
    key_option("class_labels", type=IntList(), help="Comma-separated classes, one per video (cycled)."),
    key_option("prompts", "--prompt", multiple=True,
               help="A prompt (text models; repeatable): video i gets prompt i mod the number of prompts."),
    key_option("prompts_file", "--prompts-file", type=click.Path(dir_okay=False),
               help="A UTF-8 text file of prompts, one a line; they follow the --prompt ones."),
    key_option("text_encoder", "--text-encoder", type=click.Path(file_okay=False),
               help="CLIP text-encoder folder [the one the checkpoint's run recorded in its state.json]."),
    key_option("force_text_encoder", "--force-text-encoder", is_flag=True,
               help="Sample with a --text-encoder other than the one the run recorded (its sha256 differs)."),
    key_option("seed", help="Noise seed [42]."),
    key_option("num_videos", help="Videos to make [4]."),
    key_option("batch_size", help="Videos sampled together [4]."),
    key_option("output_path", "--output-dir", "--output_path", type=click.Path(file_okay=False),
               help="Output folder [samples]; summary.json there holds the resolved config."),
    key_option("device_target", "--device", help="Device [CPU]."),
    key_option("use_parallel", "--use_parallel", "--use-parallel",
               help="True: split the videos over the processes msrun started (the same files as one process)."),
    yaml="Inference YAML (MindONE's keys; `latte sample --keys`). Default: the shipped cloud model.",
)
def sample(config):
    """Sample videos: DDPM (250 steps), DDIM or DPM-Solver++ (20 steps); GIF + MP4 + latents (.npy) per video.

    A text-conditioned checkpoint samples the prompts given (--prompt, --prompts-file), encoded by the text
    encoder its run recorded (or --text-encoder); summary.json records each video's prompt.

    \b
    Examples:
      latte sample                                   # the shipped cloud model, no downloads
      latte sample -c configs/inference/sky.yaml     # the converted official Sky Timelapse Latte-XL/2
      latte sample --checkpoint runs/sky/ckpt/step-00001000 --sampler ddim --steps 50
      latte sample --sampler dpm-solver++ --steps 20
      latte sample --checkpoint runs/t2v/ckpt/step-00002000 --prompt "clouds drifting left" --cfg-scale 4
      msrun --worker_num=2 --local_worker_num=2 --join=True latte sample --num-videos 8 --use_parallel True
    """
    # kept here: sampling (MindSpore) adds ~2.4 s to `latte --help`
    from latte_toolkit.inference.sample import join_parallel, run_sample, summary_table
    setup_mindspore(config["device_target"])
    rank, world = join_parallel(config)
    summary = run_sample(config, progress=rank == 0, rank=rank, world=world)
    if rank == 0:
        click.echo(summary_table(summary))
        click.echo(f"{summary['videos']} videos in {summary['output_path']}")
