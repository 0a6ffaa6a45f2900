"""The sampler registry: every way `latte sample` can turn noise into latents, by name.

Plain Python (no MindSpore at import), so the command line builds its `--sampler` choices from it.
Adding a sampler is one entry here plus its loop on `GaussianDiffusion`.
"""
import dataclasses

from .errors import is_integer


@dataclasses.dataclass(frozen=True)
class Sampler:
    """name; default_steps; steps_doc: what a step is for it; respacing(steps): the `timestep_respacing` of
    the diffusion it runs on; loop: that diffusion's method; loop_takes: which of steps / eta the loop takes."""
    name: str
    default_steps: int
    steps_doc: str
    respacing: object
    loop: str
    loop_takes: tuple = ()


# The betas a model can be trained and sampled with (diffusion.get_named_beta_schedule), named as diffusers names them.
NOISE_SCHEDULES = ("linear", "squaredcos_cap_v2")

SAMPLERS = {
    "ddpm": Sampler("ddpm", 250, "ancestral steps, evenly respaced over the 1000 training steps", str,
                    "p_sample_loop"),
    "ddim": Sampler("ddim", 250, "DDIM steps at an even stride of the 1000 (e.g. 10, 20, 25, 50, 100, 250)", lambda steps: f"ddim{steps}", "ddim_sample_loop", ("eta",)),
    "dpm-solver++": Sampler("dpm-solver++", 20, "model calls of DPM-Solver++ (2M, multistep)", lambda steps: "",
                            "dpm_solver_sample_loop", ("steps",)),
}


def create_sampler(name, steps=None, learn_sigma=True, frame_noise_correlation=0.0, predict_v=False,
                   noise_schedule="linear"):
    """(sampler, diffusion, steps) for a registered sampler; steps None: the sampler's default. A name or a
    step count the sampler cannot use is a ValueError naming it. frame_noise_correlation: that of the
    noise the model was trained with (diffusion.correlate_frames); predict_v: the model predicts v, not
    epsilon (create_diffusion); noise_schedule: the betas the model was trained with."""
    # kept here: diffusion.py (MindSpore) adds ~1.9 s to `latte --help`, which reads SAMPLERS
    from .diffusion import create_diffusion
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[name]
    steps = sampler.default_steps if steps is None else steps
    if noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {noise_schedule!r}; choose one of {', '.join(NOISE_SCHEDULES)}")
    if not is_integer(steps) or not 1 <= steps <= 1000:
        raise ValueError(f"sampler {name} takes 1 to 1000 steps ({sampler.steps_doc}), got {steps!r}")
    try:
        diffusion = create_diffusion(sampler.respacing(steps), noise_schedule=noise_schedule, learn_sigma=learn_sigma,
                                     frame_noise_correlation=frame_noise_correlation, predict_v=predict_v)
    except ValueError as err:
        raise ValueError(f"sampler {name} cannot take {steps} steps: {err}") from None
    return sampler, diffusion, steps


def sample(sampler, diffusion, steps, model, shape, noise=None, model_kwargs=None, progress=False, seed=0, eta=0.0):
    """Run the sampler's loop (latents unclipped: [-1, 1] is the pixels' range, not the latents');
    returns x_0 as a Tensor."""
    extra = {"steps": steps, "eta": eta}
    return getattr(diffusion, sampler.loop)(model, shape, noise=noise, clip_denoised=False, model_kwargs=model_kwargs,
                                            progress=progress, seed=seed,
                                            **{key: extra[key] for key in sampler.loop_takes})
