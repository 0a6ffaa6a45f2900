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
