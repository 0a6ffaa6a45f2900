"""The compiled training step: diffusion loss, gradients, AdamW update.

Kept apart from the loop so it can be tested and benchmarked on its own; the loop feeds it
batches of latents, timesteps and noise drawn from seeded numpy generators.
"""
import mindspore as ms
from mindspore import nn, ops


class DiffusionLoss(nn.Cell):
    """Mean diffusion loss of `network` on a batch (B, F, C, H, W) at timesteps t with given noise."""

    def __init__(self, network, diffusion):
        super().__init__()
        self.network = network
        self.diffusion = diffusion

    def construct(self, x_start, t, noise):
        return self.diffusion.training_losses(self.network, x_start, t, noise=noise)["loss"].mean()


class ClassDiffusionLoss(DiffusionLoss):
    def construct(self, x_start, t, noise, y):
        return self.diffusion.training_losses(self.network, x_start, t, {"y": y}, noise)["loss"].mean()


class TrainStep(nn.Cell):
    """One optimisation step: loss and gradients by value_and_grad, then AdamW. Returns the loss."""

    def __init__(self, loss_net, learning_rate=1e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.loss_net = loss_net
        params = loss_net.trainable_params()
        self.optimizer = nn.AdamWeightDecay(params, learning_rate=learning_rate, beta1=betas[0],
                                            beta2=betas[1], eps=eps, weight_decay=weight_decay)
        self.grad_fn = ms.value_and_grad(self.loss_net, None, self.optimizer.parameters)

    def construct(self, *inputs):
        loss, grads = self.grad_fn(*inputs)
        self.optimizer(grads)
        return loss
