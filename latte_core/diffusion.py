"""Gaussian diffusion for Latte (the DiT / improved-DDPM formulation), in MindSpore.

Latents are (B, F, C, H, W): frames on axis 1, channels on axis 2, so a learned-sigma model output
(B, F, 2C, H, W) splits on axis 2 into epsilon and the variance interpolation values.

`training_losses` is written with MindSpore ops only and runs inside a GRAPH_MODE training step; the
sampling loops run step by step from Python and take their per-step noise from a seeded numpy
generator, so a run is reproducible from (initial noise, seed).
"""
import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops
from tqdm.auto import tqdm

from .samplers import NOISE_SCHEDULES

MODEL_MEAN_TYPES = ("epsilon", "start_x", "velocity")
MODEL_VAR_TYPES = ("learned_range", "fixed_small", "fixed_large")
LOSS_TYPES = ("mse", "rescaled_mse")


def get_named_beta_schedule(name, num_diffusion_timesteps):
    if name == "linear":
        scale = 1000 / num_diffusion_timesteps  # keeps the schedule's shape for other step counts
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if name == "squaredcos_cap_v2":
        steps = np.arange(num_diffusion_timesteps + 1, dtype=np.float64) / num_diffusion_timesteps
        alpha_bar = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {', '.join(NOISE_SCHEDULES)}")


def space_timesteps(num_timesteps, section_counts):
    """The original timesteps kept by a respaced sampler.

    section_counts: "250" / "25,50" (steps per equal section), "ddimN" (stride giving exactly N
    steps, as DDIM does), or a list of counts.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot make exactly {desired} evenly strided steps out of {num_timesteps}")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulated, not multiplied: the published samplers round this way
            kept.add(start + round(position))
            position += stride
        start += size
    return kept


def mean_flat(x):
    return x.mean(axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + ops.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * ops.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] discretised to 8-bit bins under N(means, e^(2·log_scales))."""
    centered = x - means
    inv_stdv = ops.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = ops.log(ops.clamp(cdf_plus, min=1e-12))
    log_one_minus_cdf_min = ops.log(ops.clamp(1.0 - cdf_min, min=1e-12))
    log_cdf_delta = ops.log(ops.clamp(cdf_plus - cdf_min, min=1e-12))
    return ops.where(x < -0.999, log_cdf_plus,
                     ops.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


@ms.jit_class
class GaussianDiffusion:
    """Diffusion over `betas`; with `timestep_map` (respacing) the model sees original timesteps."""

    def __init__(self, betas, model_mean_type="epsilon", model_var_type="learned_range",
                 loss_type="mse", timestep_map=None, snr_gamma=None, frame_noise_correlation=0.0):
        if snr_gamma is not None and not snr_gamma > 0:
            raise ValueError(f"snr_gamma must be a positive number or None, got {snr_gamma!r}")
        if (isinstance(frame_noise_correlation, bool) or not isinstance(frame_noise_correlation, (int, float))
                or not 0.0 <= frame_noise_correlation < 1.0):
            raise ValueError(f"frame_noise_correlation must be a number in [0, 1), got {frame_noise_correlation!r}")
        self.frame_noise_correlation = float(frame_noise_correlation)
        if model_mean_type not in MODEL_MEAN_TYPES:
            raise ValueError(f"model_mean_type must be one of {MODEL_MEAN_TYPES}")
        if model_var_type not in MODEL_VAR_TYPES:
            raise ValueError(f"model_var_type must be one of {MODEL_VAR_TYPES}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.learn_sigma = model_var_type == "learned_range"
        self.num_timesteps = len(betas)
        self.timestep_map_np = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map)

        # Coefficients in float64 numpy (for tests and closed forms) and float32 tensors (for ops).
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t=0; clip the log at the next value.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        if model_var_type == "fixed_large":
            fixed_variance = np.append(self.posterior_variance[1], betas[1:])
            fixed_log_variance = np.log(fixed_variance)
        else:
            fixed_variance, fixed_log_variance = self.posterior_variance, self.posterior_log_variance_clipped

        def f32(a):
            return Tensor(np.asarray(a, dtype=np.float32))

        self.t_map = Tensor(self.timestep_map_np.astype(np.int32))
        self.sqrt_alphas_cumprod_t = f32(np.sqrt(self.alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod_t = f32(np.sqrt(1.0 - self.alphas_cumprod))
        self.sqrt_recip_alphas_cumprod_t = f32(np.sqrt(1.0 / self.alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod_t = f32(np.sqrt(1.0 / self.alphas_cumprod - 1))
        self.posterior_mean_coef1_t = f32(self.posterior_mean_coef1)
        self.posterior_mean_coef2_t = f32(self.posterior_mean_coef2)
        self.posterior_variance_t = f32(self.posterior_variance)
        self.posterior_log_variance_clipped_t = f32(self.posterior_log_variance_clipped)
        self.log_betas_t = f32(np.log(betas))
        self.fixed_variance_t = f32(fixed_variance)
        self.fixed_log_variance_t = f32(fixed_log_variance)
        self.alphas_cumprod_t = f32(self.alphas_cumprod)
        self.alphas_cumprod_prev_t = f32(self.alphas_cumprod_prev)
        self.snr_gamma = snr_gamma
        self.mse_weights = self.min_snr_weights(snr_gamma)
        self.mse_weights_t = f32(self.mse_weights)

    # ------------------------------------------------------------------ forward process
    def _extract(self, table, t, ndim):
        """table[t] shaped (B, 1, ..., 1) to broadcast against an ndim tensor."""
        values = ops.gather(table, t.astype(ms.int32), 0)
        return values.reshape((values.shape[0],) + (1,) * (ndim - 1))

    def q_sample(self, x_start, t, noise):
        """Sample q(x_t | x_0) = N(sqrt(ᾱ_t)·x_0, (1 - ᾱ_t)·I)."""
        return (self._extract(self.sqrt_alphas_cumprod_t, t, x_start.ndim) * x_start
                + self._extract(self.sqrt_one_minus_alphas_cumprod_t, t, x_start.ndim) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        n = x_t.ndim
        mean = (self._extract(self.posterior_mean_coef1_t, t, n) * x_start
                + self._extract(self.posterior_mean_coef2_t, t, n) * x_t)
        return (mean, self._extract(self.posterior_variance_t, t, n),
                self._extract(self.posterior_log_variance_clipped_t, t, n))

    def _predict_xstart_from_eps(self, x_t, t, eps):
        n = x_t.ndim
        return (self._extract(self.sqrt_recip_alphas_cumprod_t, t, n) * x_t
                - self._extract(self.sqrt_recipm1_alphas_cumprod_t, t, n) * eps)

    def _predict_xstart_from_velocity(self, x_t, t, velocity):
        """x_0 = α·x_t - σ·v for v = α·ε - σ·x_0 (α = √ᾱ_t, σ = √(1-ᾱ_t))."""
        n = x_t.ndim
        return (self._extract(self.sqrt_alphas_cumprod_t, t, n) * x_t
                - self._extract(self.sqrt_one_minus_alphas_cumprod_t, t, n) * velocity)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        n = x_t.ndim
        return ((self._extract(self.sqrt_recip_alphas_cumprod_t, t, n) * x_t - pred_xstart)
                / self._extract(self.sqrt_recipm1_alphas_cumprod_t, t, n))

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance_from_output(self, model_output, x, t, clip_denoised=True):
        """Mean and (log-)variance of p(x_{t-1} | x_t) from the raw model output."""
        n = x.ndim
        if self.learn_sigma:
            channels = x.shape[2]
            model_output, var_values = model_output[:, :, :channels], model_output[:, :, channels:]
            min_log = self._extract(self.posterior_log_variance_clipped_t, t, n)
            max_log = self._extract(self.log_betas_t, t, n)
            frac = (var_values + 1) / 2  # the model predicts a point between β̃_t and β_t (log space)
            model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = ops.exp(model_log_variance)
        else:
            model_variance = ops.broadcast_to(self._extract(self.fixed_variance_t, t, n), x.shape)
            model_log_variance = ops.broadcast_to(self._extract(self.fixed_log_variance_t, t, n), x.shape)
        if self.model_mean_type == "start_x":
            pred_xstart = model_output
        elif self.model_mean_type == "velocity":
            pred_xstart = self._predict_xstart_from_velocity(x, t, model_output)
        else:
            pred_xstart = self._predict_xstart_from_eps(x, t, model_output)
        if clip_denoised:
            pred_xstart = ops.clamp(pred_xstart, -1.0, 1.0)
        model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart}

    def p_mean_variance(self, model, x, t, clip_denoised=True, model_kwargs=None):
        output = model(x, ops.gather(self.t_map, t.astype(ms.int32), 0), **(model_kwargs or {}))
        return self.p_mean_variance_from_output(output, x, t, clip_denoised)

    # ------------------------------------------------------------------ training
    def _vb_terms_bpd(self, model_output, x_start, x_t, t, clip_denoised=False):
        """Variational bound term per sample in bits per dim: KL for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return ops.where(t == 0, nll, kl)

    def min_snr_weights(self, snr_gamma):
        """Per-timestep weights of the mean's MSE: 1 everywhere without snr_gamma (the reference), else
        Min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556): min(SNR, gamma) / SNR for epsilon prediction,
        min(SNR, gamma) for x0 prediction, min(SNR, gamma) / (SNR + 1) for v prediction, SNR = alpha_bar /
        (1 - alpha_bar). Uniform timesteps give the
        near-noiseless steps most of the gradient (the shipped cloud model's |grad| of a temporal block
        at t = 0-10 is 15-40x that at t = 400-600, where a sample's layout and motion form); the
        weights cap their share."""
        if snr_gamma is None:
            return np.ones(self.num_timesteps)
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        capped = np.minimum(snr, snr_gamma)
        return capped / {"epsilon": snr, "start_x": 1.0, "velocity": snr + 1.0}[self.model_mean_type]

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-sample losses {"loss", "mse", "vb"} for the model at timesteps t (indices into this
        diffusion's steps). With learned sigma, the VLB term trains only the variance: the mean
        prediction is detached in it, so the MSE alone trains the mean. "mse" is weighted by
        mse_weights (all 1 unless the diffusion was made with snr_gamma)."""
        if noise is None:
            noise = ops.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model(x_t, ops.gather(self.t_map, t.astype(ms.int32), 0), **(model_kwargs or {}))
        channels = x_start.shape[2]
        if self.model_mean_type == "start_x":
            target = x_start
        elif self.model_mean_type == "velocity":
            n = x_start.ndim
            target = (self._extract(self.sqrt_alphas_cumprod_t, t, n) * noise
                      - self._extract(self.sqrt_one_minus_alphas_cumprod_t, t, n) * x_start)
        else:
            target = noise
        prediction = model_output[:, :, :channels] if self.learn_sigma else model_output
        mse = mean_flat((target - prediction) ** 2)
        if self.snr_gamma is not None:
            mse = mse * ops.gather(self.mse_weights_t, t.astype(ms.int32), 0)
        if self.learn_sigma:
            frozen = ops.concat([ops.stop_gradient(prediction), model_output[:, :, channels:]], axis=2)
            vb = self._vb_terms_bpd(frozen, x_start, x_t, t)
            if self.loss_type == "rescaled_mse":
                vb = vb * (self.num_timesteps / 1000.0)  # the VLB is summed over num_timesteps terms
        else:
            vb = ops.zeros_like(mse)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    # ------------------------------------------------------------------ sampling
    def _loop(self, step_fn, model, shape, noise, model_kwargs, progress, seed):
        draw = noise_source(seed, shape, self.frame_noise_correlation)
        if noise is None:
            noise = draw()
        x = noise if isinstance(noise, Tensor) else Tensor(np.asarray(noise, np.float32))
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"initial noise has shape {tuple(x.shape)}, expected {tuple(shape)}")
        steps = list(range(self.num_timesteps))[::-1]
        if progress:
            steps = tqdm(steps, desc="sampling", unit="step")
        for i in steps:
            t = Tensor(np.full(shape[0], i, np.int32))
            step_noise = Tensor(draw())
            x = step_fn(model, x, t, step_noise, model_kwargs)
        return x

    def p_sample(self, model, x, t, noise, model_kwargs=None, clip_denoised=True):
        """One ancestral step x_t -> x_{t-1} (no noise added at t = 0)."""
        out = self.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        nonzero = (t != 0).astype(x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return out["mean"] + nonzero * ops.exp(0.5 * out["log_variance"]) * noise

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, model_kwargs=None,
                      progress=False, seed=0):
        """Ancestral (DDPM) sampling over all of this diffusion's steps; returns x_0 as a Tensor."""
        def step(model_, x, t, step_noise, kwargs):
            return self.p_sample(model_, x, t, step_noise, kwargs, clip_denoised)
        return self._loop(step, model, shape, noise, model_kwargs, progress, seed)

    def ddim_sample(self, model, x, t, noise, model_kwargs=None, clip_denoised=True, eta=0.0):
        """One DDIM step; eta = 0 is deterministic, eta = 1 matches DDPM's variance."""
        out = self.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = self._extract(self.alphas_cumprod_t, t, x.ndim)
        alpha_bar_prev = self._extract(self.alphas_cumprod_prev_t, t, x.ndim)
        sigma = eta * ops.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * ops.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = out["pred_xstart"] * ops.sqrt(alpha_bar_prev) + ops.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        nonzero = (t != 0).astype(x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return mean + nonzero * sigma * noise

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, model_kwargs=None,
                         progress=False, eta=0.0, seed=0):
        def step(model_, x, t, step_noise, kwargs):
            return self.ddim_sample(model_, x, t, step_noise, kwargs, clip_denoised, eta)
        return self._loop(step, model, shape, noise, model_kwargs, progress, seed)

    def dpm_solver_timesteps(self, steps):
        """The `steps` original timesteps DPM-Solver++ visits, evenly spaced from T-1 down ("linspace",
        as diffusers' DPMSolverMultistepScheduler): 20 steps of 1000 -> 999, 949, ..., 50."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"DPM-Solver++ needs 1 to {self.num_timesteps} steps, got {steps!r}")
        return np.round(np.linspace(0, self.num_timesteps - 1, steps + 1))[::-1][:-1].astype(np.int64)

    def dpm_solver_sample_progressive(self, model, shape, steps=20, noise=None, clip_denoised=False,
                                      model_kwargs=None, progress=False, seed=0):
        """DPM-Solver++ (2M, multistep; Lu et al. 2022) for an epsilon- or v-predicting model: yields the state
        after each of `steps` steps, the last one x_0. Deterministic given the initial noise.

        In λ = log(α/σ) (α = √ᾱ, σ = √(1-ᾱ)) each step integrates the data prediction x̂0 exactly over
        [λ_s, λ_t] with x̂0 held constant (first order), or linear through the previous step's x̂0
        (second order, midpoint form). The first step has no previous x̂0, and the last step (to σ = 0,
        where λ = ∞) is first order too: diffusers' lower_order_final with final_sigmas_type "zero".
        """
        if self.timestep_map_np.shape != (self.num_timesteps,) or (self.timestep_map_np != np.arange(self.num_timesteps)).any():
            raise ValueError("DPM-Solver++ chooses its own timesteps: use the full diffusion, create_diffusion('')")
        if self.model_mean_type == "start_x":
            raise ValueError("DPM-Solver++ here expects an epsilon- or v-predicting model")
        timesteps = self.dpm_solver_timesteps(steps)
        alpha_bar = self.alphas_cumprod[timesteps]
        alpha = np.append(np.sqrt(alpha_bar), 1.0)  # the state after the last step is x_0: α = 1, σ = 0
        sigma = np.append(np.sqrt(1.0 - alpha_bar), 0.0)
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sigma)
        if noise is None:
            noise = noise_source(seed, shape, self.frame_noise_correlation)()
        x = noise if isinstance(noise, Tensor) else Tensor(np.asarray(noise, np.float32))
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"initial noise has shape {tuple(x.shape)}, expected {tuple(shape)}")
        channels = shape[2]
        indices = range(len(timesteps))
        if progress:
            indices = tqdm(indices, desc="sampling (DPM-Solver++)", unit="step")
        previous_x0 = None
        for i in indices:
            output = model(x, Tensor(np.full(shape[0], timesteps[i], np.int32)), **(model_kwargs or {}))
            prediction = output[:, :, :channels]  # a learned-sigma model's variance channels are not used
            if self.model_mean_type == "velocity":
                x0 = float(alpha[i]) * x - float(sigma[i]) * prediction
            else:
                x0 = (x - float(sigma[i]) * prediction) / float(alpha[i])
            if clip_denoised:
                x0 = ops.clamp(x0, -1.0, 1.0)
            if i == len(timesteps) - 1:
                x = x0
            else:
                h = lam[i + 1] - lam[i]
                decay = float(alpha[i + 1] * np.expm1(-h))  # α_t (e^{-h} - 1)
                x = float(sigma[i + 1] / sigma[i]) * x - decay * x0
                if previous_x0 is not None:
                    r = (lam[i] - lam[i - 1]) / h
                    x = x - float(0.5 * decay / r) * (x0 - previous_x0)
            previous_x0 = x0
            yield x

    def dpm_solver_sample_loop(self, model, shape, steps=20, noise=None, clip_denoised=False, model_kwargs=None,
                               progress=True, seed=0):
        """DPM-Solver++ (2M) sampling in `steps` model calls; returns x_0 as a Tensor (see
        dpm_solver_sample_progressive)."""
        x = None
        for x in self.dpm_solver_sample_progressive(model, shape, steps, noise, clip_denoised, model_kwargs,
                                                    progress, seed):
            pass
        return x


def correlate_frames(noise, correlation, frames=None):
    """Noise whose frames share a component: i.i.d. standard normal `noise` (..., F, C, H, W) -> the same
    shape, each value still N(0, 1), the first `frames` frames (all by default; the rest, e.g. the
    images of image-video training, stay independent) correlated by `correlation` with each other.

    It is the "mixed" noise of PYoCo (Ge et al., 2023, arXiv 2305.10474) as a linear map of the draws, so
    no extra random numbers are used: with m the frames' mean, noise_f -> sqrt(1 - ρ)·(noise_f - m) +
    sqrt(1 - ρ + F·ρ)·m, the symmetric square root of the covariance (1 - ρ)·I + ρ·11ᵀ. Why: with
    independent noise, averaging the frames removes most of the noise at high noise levels, and a
    small model learns that average, which is a still picture; with a shared part it cannot. 0 returns
    `noise` itself (the reference's independent noise). A learned-sigma model's VLB term still scores each
    value on its own: exact in its variances, approximate in how it weighs their mean errors."""
    if not correlation:
        return noise
    noise = np.asarray(noise, np.float32)
    axis = noise.ndim - 4
    frames = noise.shape[axis] if frames is None else frames
    video = np.take(noise, range(frames), axis=axis)
    mean = video.mean(axis=axis, keepdims=True)
    mixed = (np.sqrt(1.0 - correlation) * (video - mean)
             + np.sqrt(1.0 - correlation + frames * correlation) * mean).astype(np.float32)
    if frames == noise.shape[axis]:
        return mixed
    return np.concatenate([mixed, np.take(noise, range(frames, noise.shape[axis]), axis=axis)], axis=axis)


def noise_source(seed, shape, frame_noise_correlation=0.0):
    """A function drawing one float32 array of `shape` (B, F, C, H, W) per call, its frames correlated
    by frame_noise_correlation (correlate_frames). seed: an int (one numpy stream for the whole batch),
    or one seed per sample (a stream each, so a sample's noise does not depend on the batch it is
    drawn in)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != shape[0]:
            raise ValueError(f"{len(seed)} per-sample seeds for a batch of {shape[0]}")
        streams = [np.random.default_rng(s) for s in seed]
        return lambda: correlate_frames(np.stack([r.standard_normal(tuple(shape[1:]), dtype=np.float32)
                                                  for r in streams]), frame_noise_correlation)
    stream = np.random.default_rng(seed)
    return lambda: correlate_frames(stream.standard_normal(shape).astype(np.float32), frame_noise_correlation)


def respaced_betas(betas, use_timesteps):
    """Betas of the chain that visits only `use_timesteps` with the same ᾱ at each kept step."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    new_betas, timestep_map, last = [], [], 1.0
    for i, alpha_cumprod in enumerate(alphas_cumprod):
        if i in use_timesteps:
            new_betas.append(1 - alpha_cumprod / last)
            last = alpha_cumprod
            timestep_map.append(i)
    return np.array(new_betas), timestep_map


def create_diffusion(timestep_respacing="", noise_schedule="linear", sigma_small=False,
                     predict_xstart=False, learn_sigma=True, rescale_learned_sigmas=False,
                     diffusion_steps=1000, snr_gamma=None, frame_noise_correlation=0.0, predict_v=False):
    """The diffusion Latte trains and samples with: `create_diffusion("")` for training (1000 steps),
    `create_diffusion("250")` for DDPM sampling, `create_diffusion("ddim50")` for DDIM. snr_gamma
    weights the training MSE by Min-SNR-gamma (GaussianDiffusion.min_snr_weights); sampling ignores it.
    frame_noise_correlation: the correlation between frames of the noise the sampling loops draw
    (correlate_frames); a model trained with it samples with it. predict_v: the model predicts
    v = √ᾱ·ε - √(1-ᾱ)·x_0 (Salimans & Ho 2022) instead of ε; its x_0 estimate stays bounded at high noise,
    where ε's is ε's error times √((1-ᾱ)/ᾱ) (97 at t = 950 and 157 at t = 999 of the linear schedule)."""
    if predict_xstart and predict_v:
        raise ValueError("predict_xstart and predict_v exclude each other")
    betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
    timestep_map = None
    if timestep_respacing not in ("", None):
        betas, timestep_map = respaced_betas(betas, space_timesteps(diffusion_steps, timestep_respacing))
    if learn_sigma:
        var_type = "learned_range"
    else:
        var_type = "fixed_small" if sigma_small else "fixed_large"
    return GaussianDiffusion(
        betas,
        model_mean_type="start_x" if predict_xstart else "velocity" if predict_v else "epsilon",
        model_var_type=var_type,
        loss_type="rescaled_mse" if rescale_learned_sigmas else "mse",
        timestep_map=timestep_map,
        snr_gamma=snr_gamma,
        frame_noise_correlation=frame_noise_correlation,
    )

