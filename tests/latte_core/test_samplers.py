import numpy as np
import pytest

from latte_core.samplers import SAMPLERS, create_sampler


def test_every_registered_sampler_builds_its_diffusion_with_its_default_steps():
    expected_timesteps = {"ddpm": 250, "ddim": 250, "dpm-solver++": 1000}  # DPM-Solver++ runs on the full chain
    assert set(SAMPLERS) == set(expected_timesteps)
    for name, sampler in SAMPLERS.items():
        chosen, diffusion, steps = create_sampler(name)
        assert chosen is sampler and steps == sampler.default_steps
        assert diffusion.num_timesteps == expected_timesteps[name]
    assert create_sampler("ddim", 50)[1].num_timesteps == 50
    assert create_sampler("dpm-solver++", 25)[2] == 25


@pytest.mark.parametrize("name, steps, text", [("euler", 10, "unknown sampler"), ("ddim", 300, "cannot take 300"),
                                               ("dpm-solver++", 0, "1 to 1000"), ("ddpm", 2000, "1 to 1000"),
                                               ("ddpm", 2.5, "1 to 1000")])
def test_a_sampler_or_step_count_that_cannot_work_is_a_value_error_naming_it(name, steps, text):
    with pytest.raises(ValueError, match=text):
        create_sampler(name, steps)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_takes_the_noise_schedule_the_model_was_trained_with(name):
    """The cosine schedule (Nichol & Dhariwal, eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2),
    s = 0.008) reaches each sampler's kept timesteps; the linear default is unchanged."""
    _, linear, _ = create_sampler(name, 10)
    _, cosine, _ = create_sampler(name, 10, noise_schedule="squaredcos_cap_v2")
    kept = cosine.timestep_map_np
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    expected = f(kept + 1) / f(0)
    # float64 products of up to 1000 factors; the last betas are capped at 0.999, which only the final timestep meets
    interior = kept < 990
    np.testing.assert_allclose(cosine.alphas_cumprod[interior], expected[interior], rtol=1e-9)
    assert (np.abs(cosine.alphas_cumprod - linear.alphas_cumprod) > 0.05).any()
    with pytest.raises(ValueError, match="unknown noise schedule"):
        create_sampler(name, 10, noise_schedule="cosine-ish")
