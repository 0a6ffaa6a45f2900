"""The compiled training step: diffusion loss, gradients, loss scaling, clipping, AdamW, EMA.

    step = TrainStep(loss_net, Updater(params, ...), accumulation_steps=N)
    step(*micro_batch) -> loss, grad_norm, finite      once per micro-batch; every N-th call updates
                                                       (the others return None for norm and finite)

With N = 1 a call is one graph: gradients and update. With N > 1 each micro-batch's gradients are
summed into buffers and the N-th call updates once on their mean, which equals one step on the N
micro-batches concatenated. The cells are compiled as they are (GRAPH_MODE), with no ms.jit around a
whole step: the fastest step measured on CPU.

An update whose gradients hold inf/NaN changes no weight: with a dynamic loss scale (AMP O2) the step
is skipped and the scale lowered; at float32 the caller stops the run. The optimizer is Adam with
bias correction plus decoupled weight decay, i.e. PyTorch's AdamW as the reference trains with.
`latte train` feeds latents, timesteps and noise drawn from seeded numpy generators (resumable);
`latte train-vae` trains the VAE with the same step. Every cell here is built with auto_prefix=False,
so the model's parameters keep their own names (x_embedder.proj.weight, ...) in checkpoints instead of
a wrapper's path.
"""
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from latte_core import kernels


class DiffusionLoss(nn.Cell):
    """Mean diffusion loss of `network` on a batch (B, F, C, H, W) at timesteps t with given noise;
    sample_losses(...) is each sample's (B,), which the training step also returns (the loss curve's
    split by timestep quartile).

    With use_image_num = I > 0 the batch is (B, F + I, C, H, W), its last I frames images (image-video
    joint training): the loss is the mean over all F + I frames, as the reference's train_with_img.py
    (one timestep and noise per sample, images included)."""

    def __init__(self, network, diffusion, use_image_num=0):
        super().__init__(auto_prefix=False)
        self.network = network
        self.diffusion = diffusion
        self.use_image_num = use_image_num

    def construct(self, *inputs):
        return self.sample_losses(*inputs).mean()

    def sample_losses(self, x_start, t, noise):
        kwargs = {"use_image_num": self.use_image_num} if self.use_image_num else None
        return self.diffusion.training_losses(self.network, x_start, t, kwargs, noise)["loss"]


class ClassDiffusionLoss(DiffusionLoss):
    """As DiffusionLoss, with class labels y and the label-dropout decisions made by the caller
    (force_drop_ids = 1 replaces a label by the null class), so that they are reproducible; with
    images, their labels y_image (B, I) and dropout decisions force_drop_ids_image (B, I) too."""

    def sample_losses(self, x_start, t, noise, y, force_drop_ids, y_image=None, force_drop_ids_image=None):
        if self.use_image_num:
            kwargs = {"y": y, "force_drop_ids": force_drop_ids, "use_image_num": self.use_image_num,
                      "y_image": y_image, "force_drop_ids_image": force_drop_ids_image}
        else:
            kwargs = {"y": y, "force_drop_ids": force_drop_ids}
        return self.diffusion.training_losses(self.network, x_start, t, kwargs, noise)["loss"]


class TextDiffusionLoss(DiffusionLoss):
    """As DiffusionLoss, conditioned on caption embeddings (B, 77, D), or with images (B, 1 + I, 77, D):
    the clip's caption, then each image's. Caption dropout is the caller's (it passes the empty prompt's
    embedding in a dropped caption's place), so that it is reproducible."""

    def sample_losses(self, x_start, t, noise, text_embedding):
        kwargs = {"text_embedding": text_embedding}
        if self.use_image_num:
            kwargs["use_image_num"] = self.use_image_num
        return self.diffusion.training_losses(self.network, x_start, t, kwargs, noise)["loss"]


class EMA(nn.Cell):
    """Exponential moving average of parameters, kept in non-trainable copies named ema.<name>.

    warmup: the decay after n updates is min(decay, (1 + n) / (10 + n)) (as diffusers' EMAModel and timm),
    not `decay` from the first step: with DiT's 0.9999 a run of 600 steps keeps 94 % of its initial
    weights in the EMA (0.999 over 400 steps: 67 %), so a short run or fine-tune samples mostly the
    weights it started from."""

    def __init__(self, params, decay, warmup=False):
        super().__init__(auto_prefix=False)
        self.decay = decay
        self.warmup = warmup
        self.params = ParameterTuple(params)
        self.shadow = ParameterTuple([Parameter(p.data.copy(), name=f"ema.{p.name}", requires_grad=False)
                                      for p in params])

    def construct(self, updates=None):
        """updates: the optimizer's update count including this one (its global_step), for the warmup."""
        decay = self.decay
        if self.warmup:
            n = updates.astype(ms.float32) - 1.0
            decay = ops.minimum((1.0 + n) / (10.0 + n), decay)
        for param, shadow in zip(self.params, self.shadow):
            ops.assign(shadow, shadow * decay + param * (1.0 - decay))
        return True


class Updater(nn.Cell):
    """Gradients -> one parameter update: average across devices, unscale, finite check, global norm
    (and clipping), decoupled weight decay, Adam, EMA, loss-scale adjustment. Returns (norm, finite)."""

    def __init__(self, params, learning_rate=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 max_grad_norm=None, loss_scaler=None, ema=None, grad_reducer=None, scaled=(), rate_scale=1.0):
        """`scaled`: names of the parameters trained at rate_scale times the rate (the condition path)."""
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)
        self.rate_scale = float(rate_scale)
        self.scaled = tuple(p.name in scaled for p in params) if rate_scale != 1 else (False,) * len(params)
        groups = params
        if any(self.scaled):  # MindSpore's per-group rates; order_params keeps the gradients' order
            groups = [{"params": [p for p, s in zip(params, self.scaled) if not s]},
                      {"params": [p for p, s in zip(params, self.scaled) if s], "lr": learning_rate * rate_scale},
                      {"order_params": params}]
        self.optimizer = nn.Adam(groups, learning_rate=learning_rate, beta1=betas[0], beta2=betas[1], eps=eps)
        # The optimizer's distinct rate parameters (one, or the model's and the scaled group's), set every step
        rates = {p.name: p for p in (self.optimizer.learning_rate if any(self.scaled)
                                     else (self.optimizer.learning_rate,))}
        self.rate_parameters = ParameterTuple(rates.values())
        self.rate_multiples = tuple(rate_scale if name != "learning_rate" else 1.0 for name in rates)
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.loss_scaler = loss_scaler
        self.ema = ema
        self.grad_reducer = grad_reducer
        self.squared_sum = kernels.squared_sum_op() if kernels.enabled() else None
        self.rate = float(learning_rate)

    def set_learning_rate(self, value):
        """The rate of the next updates. It reaches the compiled step as an input (rate_input), which assigns it
        to the optimizer's rate inside the graph: a graph keeps the value the rate Parameter had when it was
        compiled, and set_data on it afterwards never reached the updates (every run before this trained at its
        first warm-up step's rate, peak / warmup_steps; pretrained/EXPERIMENTS.md #18)."""
        self.rate = float(value)

    def rate_input(self):
        return Tensor(self.rate, ms.float32)

    def construct(self, grads, learning_rate):
        for rate, multiple in zip(self.rate_parameters, self.rate_multiples):
            ops.assign(rate, learning_rate * multiple)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
        if self.loss_scaler is not None:
            grads = self.loss_scaler.unscale(grads)
        norm = ops.sqrt(self._sum_of_squares(grads))
        finite = ops.isfinite(norm)  # any inf/NaN gradient makes the norm inf/NaN (cheaper than all_finite)
        if self.max_grad_norm is not None:
            factor = ops.minimum(self.max_grad_norm / (norm + 1e-6), 1.0)
            grads = tuple(g * factor for g in grads)
        if finite:
            if self.weight_decay > 0:
                for param, scaled in zip(self.params, self.scaled):
                    rate = learning_rate * self.rate_scale if scaled else learning_rate
                    ops.assign(param, param * (1.0 - rate * self.weight_decay))
            self.optimizer(grads)
            if self.ema is not None:
                self.ema(self.optimizer.global_step)
        if self.loss_scaler is not None:
            self.loss_scaler.adjust(finite)
        return norm, finite

    def _sum_of_squares(self, grads):
        if self.squared_sum is not None:
            return self.squared_sum(*[g.astype(ms.float32) for g in grads]).reshape(())
        return sum(ops.square(g.astype(ms.float32)).sum() for g in grads)


class _ScaledObjective(nn.Cell):
    """(the batch's mean loss, scaled as the gradients need it; each sample's loss, without gradient: a
    diffusion loss net's sample_losses, or the mean itself for another loss net, train-vae's)."""

    def __init__(self, loss_net, loss_scaler):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.loss_scaler = loss_scaler
        self.per_sample = hasattr(loss_net, "sample_losses")

    def construct(self, *inputs):
        if self.per_sample:
            losses = self.loss_net.sample_losses(*inputs)
            mean = losses.mean()
        else:
            mean = self.loss_net(*inputs)
            losses = mean
        scaled = mean if self.loss_scaler is None else mean * self.loss_scaler.scale_value
        return scaled, ops.stop_gradient(losses)


class _Gradients(nn.Cell):
    """(loss, each sample's loss, gradients) on a batch. With a loss scaler the gradients are those of the
    scaled loss (the updater unscales them) and the loss is divided back before any update can change the
    scale."""

    def __init__(self, loss_net, updater):
        super().__init__(auto_prefix=False)
        self.loss_scaler = updater.loss_scaler
        self.grad_fn = ms.value_and_grad(_ScaledObjective(loss_net, self.loss_scaler), None, updater.params,
                                         has_aux=True)

    def construct(self, *inputs):
        (loss, losses), grads = self.grad_fn(*inputs)
        if self.loss_scaler is not None:
            loss = loss / self.loss_scaler.scale_value
        return loss, losses, grads


class _GradientsAndUpdate(nn.Cell):
    def __init__(self, gradients, updater):
        super().__init__(auto_prefix=False)
        self.gradients = gradients
        self.updater = updater

    def construct(self, learning_rate, *inputs):
        loss, losses, grads = self.gradients(*inputs)
        norm, finite = self.updater(grads, learning_rate)
        return loss, losses, norm, finite


class _AddToSums(nn.Cell):
    def __init__(self, gradients, sums):
        super().__init__(auto_prefix=False)
        self.gradients = gradients
        self.sums = sums

    def construct(self, *inputs):
        loss, losses, grads = self.gradients(*inputs)
        for total, grad in zip(self.sums, grads):
            ops.assign_add(total, grad)
        return loss, losses


class _UpdateOnMean(nn.Cell):
    def __init__(self, updater, sums, steps):
        super().__init__(auto_prefix=False)
        self.updater = updater
        self.sums = sums
        self.steps = steps

    def construct(self, learning_rate):
        norm, finite = self.updater(tuple(total / self.steps for total in self.sums), learning_rate)
        for total in self.sums:
            ops.assign(total, ops.zeros_like(total))
        return norm, finite


class TrainStep:
    """One optimizer update per `accumulation_steps` micro-batches, called once per micro-batch:
    `step(*micro_batch) -> (loss, grad_norm, finite)`; `step.sample_losses` is then the micro-batch's
    per-sample losses (a diffusion loss net's), for the loss curve's split by timestep.

    The call that completes an optimizer step (every accumulation_steps-th) updates the weights and
    returns the update's gradient norm and finite flag; the calls before it add their gradients to
    buffers and return None for both. The update on the buffers' mean equals one step on the
    concatenated batch. With accumulation_steps=1 every call is one compiled graph (gradients and
    update together, no buffers).
    """

    def __init__(self, loss_net, updater, accumulation_steps=1):
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be at least 1, not {accumulation_steps}")
        self.updater = updater
        self.accumulation_steps = accumulation_steps
        self.micro_batches_summed = 0
        self.sample_losses = None  # each sample's loss of the last micro-batch (B,) (train-vae's: its mean)
        gradients = _Gradients(loss_net, updater)
        if accumulation_steps == 1:
            self.gradients_and_update = _GradientsAndUpdate(gradients, updater)
            return
        # Non-trainable Parameters updated with assign_add (an accumulation that matched the full batch
        # to 7e-9), named apart from optimizer state: a name like accum.<param> collides with it under jit
        sums = ParameterTuple([Parameter(ops.zeros_like(p), name=f"grad_sum.{p.name}", requires_grad=False)
                               for p in updater.params])
        self.add_to_sums = _AddToSums(gradients, sums)
        self.update_on_mean = _UpdateOnMean(updater, sums, float(accumulation_steps))

    def __call__(self, *micro_batch):
        if self.accumulation_steps == 1:
            loss, self.sample_losses, norm, finite = self.gradients_and_update(self.updater.rate_input(), *micro_batch)
            return loss, norm, finite
        loss, self.sample_losses = self.add_to_sums(*micro_batch)
        self.micro_batches_summed += 1
        if self.micro_batches_summed < self.accumulation_steps:
            return loss, None, None
        self.micro_batches_summed = 0
        norm, finite = self.update_on_mean(self.updater.rate_input())
        return loss, norm, finite


class MeanOverRanks(nn.Cell):
    """The mean of a tensor over the ranks of a data-parallel job (every rank must call it)."""

    def __init__(self, world_size):
        super().__init__(auto_prefix=False)
        self.all_reduce = ops.AllReduce()
        self.world_size = world_size

    def construct(self, x):
        return self.all_reduce(x) / self.world_size
