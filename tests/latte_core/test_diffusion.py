import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, ops

from latte_core import create_diffusion
from latte_core.diffusion import correlate_frames, noise_source, get_named_beta_schedule, space_timesteps

SHAPE = (2, 3, 4, 4, 4)  # (B, F, C, H, W)


def test_linear_schedule_matches_the_published_endpoints():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02) and len(betas) == 1000
    diffusion = create_diffusion("")
    assert diffusion.num_timesteps == 1000
    assert diffusion.alphas_cumprod[-1] == pytest.approx(np.prod(1 - betas))


def test_space_timesteps_counts_and_ddim_stride():
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and min(kept) == 0 and max(kept) == 999
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(100, "10,10") == {0, 5, 11, 16, 22, 27, 33, 38, 44, 49} | {
        50 + i for i in (0, 5, 11, 16, 22, 27, 33, 38, 44, 49)}
    with pytest.raises(ValueError):
        space_timesteps(10, "20")


def test_respaced_diffusion_keeps_alpha_bar_at_kept_steps():
    full = create_diffusion("")
    spaced = create_diffusion("250")
    kept = sorted(space_timesteps(1000, "250"))
    assert spaced.num_timesteps == 250
    np.testing.assert_allclose(spaced.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12)
    assert list(spaced.timestep_map_np) == kept


def test_q_sample_and_posterior_match_closed_forms():
    diffusion = create_diffusion("")
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    xt_np = rng.standard_normal(SHAPE).astype(np.float32)
    t = np.array([0, 637], np.int32)
    ab = diffusion.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    xt = diffusion.q_sample(Tensor(x0), Tensor(t), Tensor(noise)).asnumpy()
    np.testing.assert_allclose(xt, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise, rtol=1e-5, atol=1e-6)

    mean, var, log_var = diffusion.q_posterior_mean_variance(Tensor(x0), Tensor(xt_np), Tensor(t))
    betas = diffusion.betas[t].reshape(-1, 1, 1, 1, 1)
    ab_prev = diffusion.alphas_cumprod_prev[t].reshape(-1, 1, 1, 1, 1)
    # Bayes: q(x_{t-1}|x_t,x_0) has mean (√ᾱ_{t-1}β_t x0 + √α_t(1-ᾱ_{t-1}) x_t)/(1-ᾱ_t), var β_t(1-ᾱ_{t-1})/(1-ᾱ_t)
    expected_mean = (np.sqrt(ab_prev) * betas * x0 + np.sqrt(1 - betas) * (1 - ab_prev) * xt_np) / (1 - ab)
    expected_var = betas * (1 - ab_prev) / (1 - ab)
    np.testing.assert_allclose(mean.asnumpy(), expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var.asnumpy().reshape(-1), expected_var.reshape(-1), rtol=1e-5)
    assert var.asnumpy()[0].item() == 0.0  # no variance at t = 0 ...
    assert np.isfinite(log_var.asnumpy()).all()  # ... and the clipped log stays finite


class _ConstantModel:
    """A stand-in denoiser that returns a fixed output; lets the loss be checked by hand."""

    def __init__(self, output):
        self.output = Tensor(output)
        self.seen_t = None

    def __call__(self, x, t, **kwargs):
        self.seen_t = t.asnumpy()
        return self.output


def test_training_losses_mse_is_epsilon_error_and_vb_nonnegative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    diffusion = create_diffusion("")
    rng = np.random.default_rng(1)
    x0 = np.clip(rng.standard_normal(SHAPE), -1, 1).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    output = rng.standard_normal((2, 3, 8, 4, 4)).astype(np.float32) * 0.1
    model = _ConstantModel(output)
    t = np.array([0, 500], np.int32)
    terms = diffusion.training_losses(model, Tensor(x0), Tensor(t), noise=Tensor(noise))
    mse = ((noise - output[:, :, :4]) ** 2).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(terms["mse"].asnumpy(), mse, rtol=1e-5)
    vb = terms["vb"].asnumpy()
    assert (vb[1:] >= 0).all() and np.isfinite(vb).all()
    np.testing.assert_allclose(terms["loss"].asnumpy(), mse + vb, rtol=1e-5)
    # a respaced diffusion hands the model the original timesteps
    spaced = create_diffusion("250")
    spaced.training_losses(model, Tensor(x0), Tensor(np.array([1, 249], np.int32)), noise=Tensor(noise))
    assert list(model.seen_t) == [spaced.timestep_map_np[1], 999]


def test_min_snr_gamma_weights_the_mse_per_timestep_and_leaves_the_vb_term():
    """Min-SNR-gamma (arXiv 2303.09556) from the schedule's SNR = alpha_bar / (1 - alpha_bar): for epsilon
    prediction min(SNR, gamma) / SNR, so 1 from the first timestep whose SNR is <= gamma on, and far below 1
    at t = 0 (SNR ~ 1e4 on the linear schedule). Bound rtol 1e-5: float32 losses against float64 weights."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    plain, weighted = create_diffusion(""), create_diffusion("", snr_gamma=5.0)
    snr = plain.alphas_cumprod / (1 - plain.alphas_cumprod)
    weights = weighted.mse_weights
    np.testing.assert_allclose(weights, np.minimum(snr, 5.0) / snr, rtol=1e-12)
    first_capped = int(np.argmax(snr <= 5.0))
    assert 50 < first_capped < 300 and (weights[first_capped:] == 1).all() and weights[0] < 1e-3
    np.testing.assert_array_equal(plain.mse_weights, np.ones(1000))
    np.testing.assert_array_equal(create_diffusion("", snr_gamma=5.0, predict_xstart=True).mse_weights,
                                  np.minimum(snr, 5.0))

    rng = np.random.default_rng(4)
    x0 = np.clip(rng.standard_normal(SHAPE), -1, 1).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    model = _ConstantModel(rng.standard_normal((2, 3, 8, 4, 4)).astype(np.float32) * 0.1)
    t = np.array([3, 700], np.int32)
    base = plain.training_losses(model, Tensor(x0), Tensor(t), noise=Tensor(noise))
    terms = weighted.training_losses(model, Tensor(x0), Tensor(t), noise=Tensor(noise))
    np.testing.assert_allclose(terms["mse"].asnumpy(), base["mse"].asnumpy() * weights[t], rtol=1e-5)
    np.testing.assert_allclose(terms["vb"].asnumpy(), base["vb"].asnumpy(), rtol=1e-5)
    assert terms["mse"].asnumpy()[0] < 0.01 * base["mse"].asnumpy()[0]
    with pytest.raises(ValueError, match="snr_gamma"):
        create_diffusion("", snr_gamma=0)


def test_frame_correlated_noise_has_the_stated_covariance_and_is_the_reference_noise_at_zero():
    """correlate_frames: every value stays N(0, 1), any two video frames correlate by rho, images stay
    independent, and rho = 0 is the draws themselves. Bound 0.03 on sample moments: 32,768 values per frame,
    so the standard error of a correlation or a variance is <= 0.008 and 0.03 is ~4 of them."""
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((1024, 8, 2, 4, 4)).astype(np.float32)  # (B, F, C, H, W)
    mixed = correlate_frames(draws, 0.5, frames=6)  # 6 video frames, then 2 images
    per_frame = mixed.swapaxes(0, 1).reshape(8, -1)
    correlation = np.corrcoef(per_frame)
    video = ~np.eye(6, dtype=bool)
    assert np.abs(correlation[:6, :6][video] - 0.5).max() < 0.03
    assert np.abs(correlation[6:, :6]).max() < 0.03 and abs(correlation[6, 7]) < 0.03
    assert np.abs(per_frame.var(axis=1) - 1).max() < 0.03
    np.testing.assert_array_equal(mixed[:, 6:], draws[:, 6:])  # the images' noise is untouched
    # the map itself: frame deviations from the mean shrink by sqrt(1 - rho), the mean grows to unit variance
    mean = draws[:, :6].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(mixed[:, :6].mean(axis=1, keepdims=True), np.sqrt(0.5 + 6 * 0.5) * mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[:, :6] - mixed[:, :6].mean(axis=1, keepdims=True),
                               np.sqrt(0.5) * (draws[:, :6] - mean), rtol=1e-5, atol=1e-6)
    assert correlate_frames(draws, 0.0) is draws
    # the sampling loops' noise (initial and per step) is the same streams, correlated
    shape, seeds = (2, 8, 2, 4, 4), [[7, 0], [7, 1]]
    np.testing.assert_array_equal(noise_source(seeds, shape, 0.5)(), correlate_frames(noise_source(seeds, shape)(), 0.5))
    assert create_diffusion("250", frame_noise_correlation=0.5).frame_noise_correlation == 0.5
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="frame_noise_correlation"):
            create_diffusion("", frame_noise_correlation=bad)


def test_vb_term_is_zero_kl_when_model_predicts_true_noise_and_posterior_variance():
    """With eps = the true noise and the variance at β̃ (v = -1), the KL terms vanish."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    diffusion = create_diffusion("")
    rng = np.random.default_rng(2)
    x0 = np.clip(rng.standard_normal(SHAPE), -1, 1).astype(np.float32) * 0.5
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    output = np.concatenate([noise, -np.ones_like(noise)], axis=2)
    terms = diffusion.training_losses(_ConstantModel(output), Tensor(x0), Tensor(np.array([10, 700], np.int32)),
                                      noise=Tensor(noise))
    assert np.abs(terms["vb"].asnumpy()).max() < 1e-4
    assert np.abs(terms["mse"].asnumpy()).max() == 0.0


def _tiny_denoiser(x, t, **kwargs):
    # deterministic, timestep-dependent output with learned-sigma channels
    scale = (t.asnumpy().astype(np.float32) / 1000.0).reshape(-1, 1, 1, 1, 1)
    eps = x * Tensor(scale) * 0.5
    return ms.ops.concat([eps, ms.ops.zeros_like(eps)], axis=2)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_deterministic_given_noise_and_seed(sampler):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    diffusion = create_diffusion("ddim10" if sampler == "ddim" else "10")
    noise = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    loop = diffusion.ddim_sample_loop if sampler == "ddim" else diffusion.p_sample_loop
    first = loop(_tiny_denoiser, SHAPE, noise=noise, seed=5).asnumpy()
    second = loop(_tiny_denoiser, SHAPE, noise=noise, seed=5).asnumpy()
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all() and first.shape == SHAPE
    other_noise = loop(_tiny_denoiser, SHAPE, noise=noise + 1, seed=5).asnumpy()
    assert np.abs(other_noise - first).max() > 1e-3
    if sampler == "ddpm":  # the per-step noise follows the seed
        assert np.abs(loop(_tiny_denoiser, SHAPE, noise=noise, seed=6).asnumpy() - first).max() > 1e-3
    else:  # eta = 0 adds no noise, so the seed does not matter
        np.testing.assert_allclose(loop(_tiny_denoiser, SHAPE, noise=noise, seed=6).asnumpy(), first)


def test_ddim_eta0_with_perfect_denoiser_recovers_x0():
    """If the model predicts the exact noise of a fixed x0, DDIM (eta 0) lands on x0."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    diffusion = create_diffusion("ddim25")
    rng = np.random.default_rng(4)
    x0 = (rng.uniform(-0.9, 0.9, SHAPE)).astype(np.float32)
    full = create_diffusion("")

    def oracle(x, t, **kwargs):
        ab = full.alphas_cumprod[t.asnumpy()].reshape(-1, 1, 1, 1, 1).astype(np.float32)
        eps = (x.asnumpy() - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        return Tensor(np.concatenate([eps, np.zeros_like(eps)], axis=2).astype(np.float32))

    out = diffusion.ddim_sample_loop(oracle, SHAPE, noise=rng.standard_normal(SHAPE).astype(np.float32))
    np.testing.assert_allclose(out.asnumpy(), x0, atol=1e-4)


def _analytic_eps(x, t):
    """The fixture's fixed epsilon predictor: tanh(x) · t/1000 + 0.05 · cos(x)."""
    scale = (t.astype(ms.float32) / 1000.0).reshape((-1,) + (1,) * (x.ndim - 1))
    return ops.tanh(x) * scale + 0.05 * ops.cos(x)


@pytest.mark.parametrize("steps", [10, 20, 25])
def test_dpm_solver_pp_2m_follows_diffusers_state_by_state(fixtures_dir, steps):
    """Every state of diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, lower_order_final,
    final sigma 0, linspace timesteps) on the Latte schedule. Bound 1e-4 of the state's scale (the
    fixtures' float32 parity bound): the two compute the coefficients from float64 and float32 ᾱ."""
    reference = np.load(fixtures_dir / "samplers" / "dpm_solver_pp2m.npz")
    diffusion = create_diffusion("")
    np.testing.assert_array_equal(diffusion.dpm_solver_timesteps(steps), reference[f"timesteps_{steps}"])
    states = [x.asnumpy() for x in diffusion.dpm_solver_sample_progressive(_analytic_eps, reference["x_T"].shape,
                                                                           steps, noise=reference["x_T"])]
    assert len(states) == steps
    for ours, ref in zip(states, reference[f"trajectory_{steps}"]):
        assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4
    final = diffusion.dpm_solver_sample_loop(_analytic_eps, reference["x_T"].shape, steps, noise=reference["x_T"],
                                             progress=False)
    np.testing.assert_array_equal(final.asnumpy(), states[-1])


def test_dpm_solver_uses_only_the_epsilon_channels_and_refuses_bad_step_counts():
    diffusion = create_diffusion("")
    noise = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    def learned_sigma(x, t):  # epsilon channels, then variance channels that must not matter
        return ops.concat([_analytic_eps(x, t), ops.ones_like(x) * 7.0], axis=2)

    with_variance = diffusion.dpm_solver_sample_loop(learned_sigma, SHAPE, 5, noise=noise, progress=False)
    plain = diffusion.dpm_solver_sample_loop(_analytic_eps, SHAPE, 5, noise=noise, progress=False)
    np.testing.assert_array_equal(with_variance.asnumpy(), plain.asnumpy())
    for bad in (0, -3, 1001, 2.5, True):
        with pytest.raises(ValueError, match="DPM-Solver"):
            diffusion.dpm_solver_timesteps(bad)
    with pytest.raises(ValueError, match="create_diffusion"):
        next(create_diffusion("250").dpm_solver_sample_progressive(_analytic_eps, SHAPE, 5))


def test_v_prediction_trains_on_v_and_weighs_min_snr_by_snr_plus_one():
    """predict_v: the MSE target is v = sqrt(alpha_bar)*noise - sqrt(1 - alpha_bar)*x0, so a model that outputs
    exactly that v (and the variance at beta-tilde) has MSE 0 and a vanishing KL, as the epsilon model that
    outputs the true noise; Min-SNR-gamma for v is min(SNR, gamma) / (SNR + 1) (arXiv 2303.09556). Bounds:
    1e-4 for the KL (float32, as the epsilon test), 1e-10 for an MSE whose target was computed the same way."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    diffusion = create_diffusion("", predict_v=True)
    assert diffusion.model_mean_type == "velocity"
    rng = np.random.default_rng(7)
    x0 = np.clip(rng.standard_normal(SHAPE), -1, 1).astype(np.float32) * 0.5
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    t = np.array([10, 950], np.int32)
    ab = diffusion.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    velocity = (np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0).astype(np.float32)
    output = np.concatenate([velocity, -np.ones_like(velocity)], axis=2)
    terms = diffusion.training_losses(_ConstantModel(output), Tensor(x0), Tensor(t), noise=Tensor(noise))
    assert np.abs(terms["mse"].asnumpy()).max() < 1e-10 and np.abs(terms["vb"].asnumpy()).max() < 1e-4
    # at t = 950 (v ~ -x0) the epsilon diffusion scores the same output against the noise: far from 0
    eps_terms = create_diffusion("").training_losses(_ConstantModel(output), Tensor(x0), Tensor(t),
                                                     noise=Tensor(noise))
    assert eps_terms["mse"].asnumpy()[1] > 0.5

    snr = diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod)
    np.testing.assert_allclose(create_diffusion("", predict_v=True, snr_gamma=5.0).mse_weights,
                               np.minimum(snr, 5.0) / (snr + 1), rtol=1e-12)
    with pytest.raises(ValueError, match="predict_xstart and predict_v"):
        create_diffusion("", predict_xstart=True, predict_v=True)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_a_v_model_samples_what_the_equal_epsilon_model_samples(sampler):
    """A v-predicting model that is an epsilon model rewritten, v = (eps - sigma*x) / alpha, gives every sampler
    the same x0 estimates, so the same videos from the same noise and seed. Bound 1e-4 of the output's scale:
    float32, and at t = 999 the v form divides by alpha = 0.0064 and multiplies back."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    from latte_core.samplers import create_sampler, sample
    full = create_diffusion("")
    noise = np.random.default_rng(8).standard_normal(SHAPE).astype(np.float32)

    def eps_model(x, t):
        return ops.concat([_analytic_eps(x, t), ops.zeros_like(x)], axis=2)

    def v_model(x, t):
        ab = Tensor(full.alphas_cumprod[t.asnumpy()].astype(np.float32).reshape(-1, 1, 1, 1, 1))
        velocity = (_analytic_eps(x, t) - ops.sqrt(1 - ab) * x) / ops.sqrt(ab)
        return ops.concat([velocity, ops.zeros_like(x)], axis=2)

    outputs = []
    for model, predict_v in ((eps_model, False), (v_model, True)):
        chosen, diffusion, steps = create_sampler(sampler, 10, predict_v=predict_v)
        outputs.append(sample(chosen, diffusion, steps, model, SHAPE, noise=noise, seed=3).asnumpy())
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4 * np.abs(outputs[0]).max()
    assert np.abs(outputs[0] - noise).max() > 0.1  # the loops did move the noise
