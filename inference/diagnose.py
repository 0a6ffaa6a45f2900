"""`latte diagnose`: how well a Latte checkpoint denoises its own cached data, timestep band by band.

    checkpoint (a run folder, a ckpt/step-N folder, or a weights file) + cache ─ one batch of real clips
    (the posterior mean) ─ noised to each probed timestep t ─ one model call ─ per t and per band:
      eps_mse    the MSE of the noise the output implies
      x0_mse     the MSE of the clean latents it implies, against mean_mse: that of the trivial
                 predictor (each channel's mean latent), which a trained model must beat or match
      x0_std     the implied clean latents' std per channel, against the data's
      drift_kept the drift of the decoded x0 predictions projected on the real clips' drift (1: the
                 prediction moves as the clip does, 0: a still picture): where a model stops seeing
                 motion through the noise, its samples' motion has to be born
    and a round trip from each t0 of round_trip_from: the clips noised to t0, then sampled back to t = 0
    (deterministic DDIM, ROUND_TRIP_STEPS model calls): x0_mse, drift_kept and the samples' speed against
    the clips'. Where x_t still shows the clip, a model that learned its data brings the clip back;
    one that did not makes another picture, or a still one
    ─ OUT/diagnose.json, OUT/x0_predictions.png (one clip's decoded x0 across t, then its round trips)

Why: an epsilon model's x0 is x_t/√ᾱ minus its noise error times √((1-ᾱ)/ᾱ) (97 at t = 950), so an eps-MSE
that looks tiny on the loss curve (0.009) can mean an x0 a hundred times worse than predicting the mean,
at exactly the timesteps where a sample's colours, layout and motion are decided. The loss curve hides
it; this does not. A band with t ≥ 500 whose x0_mse exceeds the latents' variance is a warning.
One-step predictions at high noise are a blurred mean, still when a clip may drift either way, as they
should be; the round trip is what sampling does with what the noise left (pretrained/EXPERIMENTS.md #16).
"""
import os

import numpy as np
from mindspore import Tensor

from latte_core.atomic import make_output_dir, write_figures_json
from latte_core.checkpoint import CheckpointError, read_state_dict, set_weights
from latte_core.diffusion import create_diffusion
from latte_core.errors import UserError
from latte_core.latte import Latte, latte_config_from_state_dict
from latte_core.plot import save_frame_grid
from latte_core.vae import load_vae
from latte_toolkit.datasets.cache import open_cache
from latte_toolkit.datasets.loader import CacheLoader
from latte_toolkit.datasets.video import to_frames
from latte_toolkit.train.checkpoint import checkpoint_dirs, read_state

from .config import DIAGNOSE_TIMESTEPS, ROUND_TRIP_FROM
from .quality import drift_velocity

BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))
ROUND_TRIP_STEPS = 25
WARN_FROM = 500  # bands from here on decide a sample's layout: their x0 must not be worse than the mean's


class DiagnoseError(UserError):
    pass


def band_of(t):
    return next(f"{low}-{high - 1}" for low, high in BANDS if low <= t < high)


def implied_predictions(output, x_t, alpha_bar, prediction_type):
    """(x0, eps) the model output implies at x_t, for an epsilon or v model (numpy, per-sample alpha_bar)."""
    alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        x0 = alpha * x_t - sigma * output
    else:
        x0 = (x_t - sigma * output) / alpha
    return x0, (x_t - alpha * x0) / sigma


def diagnose_batch(model_call, latents, alpha_bars, timesteps, prediction_type, seed=0):
    """Figures per timestep for clean `latents` (B, F, C, h, w): model_call(x_t, t) -> the output's first C
    channels. Returns (rows, the x0 predictions per timestep)."""
    rng = np.random.default_rng(seed)
    channel_axes = (0, 1, 3, 4)
    mean = latents.mean(axis=channel_axes, keepdims=True)
    mean_mse = float(((latents - mean) ** 2).mean())
    rows, predictions = [], []
    for t in timesteps:
        noise = rng.standard_normal(latents.shape).astype(np.float32)
        alpha_bar = float(alpha_bars[t])
        x_t = (np.sqrt(alpha_bar) * latents + np.sqrt(1.0 - alpha_bar) * noise).astype(np.float32)
        x0, eps = implied_predictions(model_call(x_t, t), x_t, alpha_bar, prediction_type)
        rows.append({"t": int(t), "band": band_of(t), "eps_mse": float(((eps - noise) ** 2).mean()),
                     "x0_mse": float(((x0 - latents) ** 2).mean()), "mean_mse": mean_mse,
                     "x0_std": [float(s) for s in x0.std(axis=channel_axes)]})
        predictions.append(x0)
    return rows, predictions


def round_trip(model_call, latents, alpha_bars, t0, prediction_type, steps=ROUND_TRIP_STEPS, seed=0):
    """Clean `latents` noised to timestep t0, then deterministic DDIM (eta 0) back to t = 0 over `steps`
    evenly spaced timesteps: the model's own sample of what the noise left of the clips."""
    noise = np.random.default_rng([seed, t0]).standard_normal(latents.shape).astype(np.float32)
    alpha_bar = float(alpha_bars[t0])
    x = (np.sqrt(alpha_bar) * latents + np.sqrt(1.0 - alpha_bar) * noise).astype(np.float32)
    timesteps = np.unique(np.linspace(0, t0, steps).round().astype(int))[::-1]
    for i, t in enumerate(timesteps):
        x0, eps = implied_predictions(model_call(x, int(t)), x, float(alpha_bars[t]), prediction_type)
        following = float(alpha_bars[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        x = (np.sqrt(following) * x0 + np.sqrt(1.0 - following) * eps).astype(np.float32)
    return x


def drift_kept(predicted, real):
    """The predictions' drift velocities (N, 2) projected on the real clips' (N, 2): sum(p·r) / sum(r·r)."""
    return float((predicted * real).sum() / max((real * real).sum(), 1e-12))


def summarise(rows, latents):
    """Per band: the mean of its rows' figures; and the warnings for bands t ≥ WARN_FROM whose x0 is worse
    than the latents' variance."""
    variance = float(latents.var())
    bands = {}
    for name in dict.fromkeys(row["band"] for row in rows):
        mine = [row for row in rows if row["band"] == name]
        bands[name] = {key: float(np.mean([row[key] for row in mine]))
                       for key in ("eps_mse", "x0_mse", "mean_mse", "drift_kept") if key in mine[0]}
        bands[name]["x0_std"] = np.mean([row["x0_std"] for row in mine], axis=0).tolist()
        bands[name]["timesteps"] = [row["t"] for row in mine]
    warnings = []
    for name, figures in bands.items():
        error = figures["x0_mse"]
        if int(name.split("-")[0]) >= WARN_FROM and not error <= variance:  # an overflow (inf, nan) too
            warnings.append(f"t {name}: the x0 prediction's MSE {error:.3g} is worse than the latents' "
                            f"variance {variance:.3g} (the mean latent scores {figures['mean_mse']:.3g}): samples "
                            f"will be blotchy and their layout, colours and motion lost. Train with "
                            f"prediction_type: v_prediction (an epsilon model's x0 error is its noise error times "
                            f"up to 157 here), or longer; ema_warmup: true for runs under ~10k steps")
    return {"latent_variance": variance, "latent_std": [float(s) for s in latents.std(axis=(0, 1, 3, 4))],
            "bands": bands, "warnings": warnings}


def _checkpoint_folder(path):
    """A ckpt/step-N folder from a run folder (its newest committed one: never a staging or set-aside
    folder), or the folder itself; None for a file."""
    if not os.path.isdir(path):
        return None
    committed = checkpoint_dirs(os.path.join(path, "ckpt"))
    folder = committed[-1] if committed else path
    if not all(os.path.isfile(os.path.join(folder, name)) for name in ("ema.ckpt", "state.json")):
        raise DiagnoseError(f"checkpoint {path}: not a run folder, a ckpt/step-N folder (ema.ckpt and state.json) "
                            f"or a weights file")
    return folder


def load_model(path, prediction_type=None):
    """(Latte in inference mode, its settings: condition, num_frames, prediction_type, noise_schedule) from a
    run folder, a checkpoint folder or a weights file (whose prediction type is epsilon unless given, its
    schedule linear)."""
    folder = _checkpoint_folder(path)
    weights = os.path.join(folder, "ema.ckpt") if folder else path
    try:
        state = read_state_dict(weights)
        settings = latte_config_from_state_dict(state)
    except (CheckpointError, ValueError) as err:
        raise DiagnoseError(f"checkpoint {weights}: {err}") from None
    trained = {}
    if folder:
        trained = read_state(folder)["config"]
        settings["num_heads"] = trained["num_heads"]
    recorded = trained.get("prediction_type", "epsilon")
    if folder and prediction_type not in (None, recorded):
        raise DiagnoseError(f"prediction_type {prediction_type!r}: {folder} was trained to predict {recorded}")
    settings.pop("class_dropout_prob", None)
    model = Latte(**settings)
    set_weights(model, state, weights, recompute=("pos_embed", "temp_embed"))
    model.set_train(False)
    settings["prediction_type"] = prediction_type or recorded
    settings["noise_schedule"] = trained.get("noise_schedule", "linear")
    return model, settings


def clean_batch(cache, clips, num_frames, condition, seed=0):
    """One batch of `clips` clean clips (the posterior mean, float32) from the cache and the model keyword
    arrays of their conditions (class labels, caption embeddings, or none)."""
    try:
        videos = len(open_cache(cache).ids)
        if videos < clips:
            raise DiagnoseError(f"cache {cache}: holds {videos} videos, fewer than --clips {clips}")
        loader = CacheLoader(cache, batch_size=clips, num_frames=num_frames, posterior="mean", seed=seed,
                             shuffle=True, on_corrupt="raise", captions=condition == "text")
    except (ValueError, OSError) as err:
        raise DiagnoseError(f"cache {cache}: {err}") from None
    batch = next(iter(loader))
    conditions = {}
    if condition == "class":
        if (batch["label"] < 0).any():
            raise DiagnoseError(f"cache {cache}: a class-conditional checkpoint needs a label for every video")
        conditions["y"] = batch["label"].astype(np.int32)
    elif condition == "text":
        conditions["text_embedding"] = batch["caption_embedding"]
    return batch["latent"].astype(np.float32), conditions


def run_diagnose(checkpoint, cache, out, vae_path, timesteps=DIAGNOSE_TIMESTEPS, clips=16, seed=0,
                 prediction_type=None, round_trip_from=ROUND_TRIP_FROM):
    """Diagnose `checkpoint` on `cache` (module docstring); writes OUT/diagnose.json and
    OUT/x0_predictions.png and returns the report."""
    if not timesteps or any(not 0 <= t < 1000 for t in timesteps):
        raise DiagnoseError(f"--timesteps must lie in 0..999, got {list(timesteps)}")
    if any(not 0 < t < 1000 for t in round_trip_from):
        raise DiagnoseError(f"--round-trip-from must lie in 1..999, got {list(round_trip_from)}")
    make_output_dir(out, "--out", create=False)  # before any work; writes nothing
    model, settings = load_model(checkpoint, prediction_type)
    latents, conditions = clean_batch(cache, clips, settings["num_frames"], settings.get("condition"), seed)
    expected = (settings["num_frames"], settings["in_channels"], settings["input_size"], settings["input_size"])
    if latents.shape[1:] != expected:
        raise DiagnoseError(f"cache {cache}: its clips are {latents.shape[1:]} latents (frames, channels, h, w); "
                            f"checkpoint {checkpoint} takes {expected}")
    vae = load_vae(vae_path)
    make_output_dir(out, "--out")  # the inputs passed their checks: now the output folder may be made
    kwargs = {name: Tensor(value) for name, value in conditions.items()}
    channels = settings["in_channels"]

    def model_call(x_t, t):
        return model(Tensor(x_t), Tensor(np.full(len(x_t), t, np.int32)), **kwargs).asnumpy()[:, :, :channels]

    diffusion = create_diffusion("", noise_schedule=settings["noise_schedule"])
    timesteps = sorted(timesteps)
    rows, predictions = diagnose_batch(model_call, latents, diffusion.alphas_cumprod, timesteps,
                                       settings["prediction_type"], seed)
    decode = lambda z: to_frames(vae.decode_video(z / vae.config["scaling_factor"]))  # noqa: E731
    real = decode(latents)
    real_drift = drift_velocity(real)
    grid = [("real clip", real[0])]
    for row, x0 in zip(rows, predictions):
        decoded = decode(x0)
        row["drift_kept"] = drift_kept(drift_velocity(decoded), real_drift)
        grid.append((f"x0 at t={row['t']}", decoded[0]))
    trips = []
    real_speed = np.linalg.norm(real_drift, axis=1)
    for t0 in sorted(round_trip_from):
        back = round_trip(model_call, latents, diffusion.alphas_cumprod, t0, settings["prediction_type"], seed=seed)
        decoded = decode(back)
        drift = drift_velocity(decoded)
        ratio = np.linalg.norm(drift, axis=1) / np.maximum(real_speed, 1e-6)
        trips.append({"from_t": int(t0), "x0_mse": float(((back - latents) ** 2).mean()),
                      "drift_kept": drift_kept(drift, real_drift), "speed_ratio_median": float(np.median(ratio))})
        grid.append((f"back from t={t0}", decoded[0]))
    report = {"checkpoint": checkpoint, "cache": cache, "prediction_type": settings["prediction_type"],
              "noise_schedule": settings["noise_schedule"], "clips": clips, **summarise(rows, latents),
              "timesteps": rows, "round_trips": trips}
    frames = sorted({0, real.shape[1] // 2, real.shape[1] - 1})  # first, middle and last
    save_frame_grid([(label, clip[frames]) for label, clip in grid], [f"frame {f}" for f in frames],
                    os.path.join(out, "x0_predictions.png"))
    write_figures_json(report, os.path.join(out, "diagnose.json"))
    return report
