"""The Inception-v1 I3D video classifier (Carreira & Zisserman, "Quo Vadis, Action Recognition?") as FVD's
detector: the piergiaj PyTorch layout whose Kinetics-400 weights are published as `i3d_pretrained_400.pt`
(VideoGPT, TATS, StyleGAN-V's "videogpt" mode, cd-fvd). Parameter names follow that state dict
(`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, `logits.conv3d.bias`), so its file loads
as it is, torch-free, through `latte_core.checkpoint`.

Evaluation only: BatchNorm uses its running statistics, dropout is the identity. Every convolution and
max-pool pads TensorFlow-style "same" (the padding computed from the input's size, the larger half
after), with zeros as the reference does. The network's output is the 400 logits averaged over time:
FVD's features.

    preprocess_i3d(videos)      uint8 (B, T, H, W, 3) -> float32 (B, 3, T, 224, 224) in [-1, 1]
    InceptionI3d()(x)           (B, 3, T, 224, 224) -> (B, 400)
    load_i3d(path)              the weights file checked key by key (missing / unexpected / misshaped named)
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .checkpoint import read_state_dict, set_weights
from .runtime import prefer_avx2_onednn

I3D_RESOLUTION = 224  # the detector's own input size (cd-fvd's TARGET_RESOLUTION)
I3D_CLASSES = 400
MIN_FRAMES = 9  # fewer frames leave the 2-frame temporal average pool nothing to pool


# ----------------------------------------------------------------------------------- preprocessing
def _bilinear_matrix(size_in, size_out):
    """(size_out, size_in) float64 weights of a bilinear resize with half-pixel centres and no
    antialiasing (PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`)."""
    scale = size_in / size_out
    source = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = source - low
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights


def preprocess_i3d(videos, size=I3D_RESOLUTION):
    """uint8 videos (B, T, H, W, 3) -> float32 (B, 3, T, size, size) in [-1, 1]: every frame resized
    bilinearly (half-pixel centres, no antialiasing), then scaled as 2 x / 255 - 1 (cd-fvd's
    preprocess_i3d). The resize is two small matrix products per frame, in float32."""
    videos = np.asarray(videos)
    _, _, height, width, _ = videos.shape
    rows = _bilinear_matrix(height, size).astype(np.float32)  # (size, H)
    cols = _bilinear_matrix(width, size).astype(np.float32)  # (size, W)
    frames = videos.astype(np.float32)
    resized = np.einsum("ph,bthwc,qw->bctpq", rows, frames, cols, optimize=True)  # (B, 3, T, size, size)
    return (2.0 * resized / 255.0 - 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------- blocks
def _same_padding(size, kernel, stride):
    """TensorFlow "same" padding of one axis as (before, after): the larger half after."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x, kernel, stride):
    """(B, C, T, H, W) zero-padded so that a valid convolution or pooling gives ceil(size / stride)."""
    _, _, t, h, w = x.shape
    pt = _same_padding(t, kernel[0], stride[0])
    ph = _same_padding(h, kernel[1], stride[1])
    pw = _same_padding(w, kernel[2], stride[2])
    if pt[1] or ph[1] or pw[1]:
        x = ops.pad(x, (pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]))
    return x


class _FrozenBatchNorm(nn.Cell):
    """BatchNorm3d in evaluation mode, named as PyTorch names it (weight, bias, running_mean, running_var)."""

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = ms.Parameter(ms.Tensor(np.ones(channels, np.float32)), name="weight", requires_grad=False)
        self.bias = ms.Parameter(ms.Tensor(np.zeros(channels, np.float32)), name="bias", requires_grad=False)
        self.running_mean = ms.Parameter(ms.Tensor(np.zeros(channels, np.float32)), name="running_mean",
                                         requires_grad=False)
        self.running_var = ms.Parameter(ms.Tensor(np.ones(channels, np.float32)), name="running_var",
                                        requires_grad=False)

    def construct(self, x):
        scale = self.weight / ops.sqrt(self.running_var + self.eps)  # (C,)
        shift = self.bias - self.running_mean * scale  # (C,)
        return x * scale.reshape(1, -1, 1, 1, 1) + shift.reshape(1, -1, 1, 1, 1)


class Unit3D(nn.Cell):
    """Conv3d (no padding of its own) after "same" zero padding, then BatchNorm and ReLU (the logits
    layer: a biased convolution alone)."""

    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1), batch_norm=True,
                 relu=True, bias=False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, pad_mode="valid",
                                has_bias=bias, weight_init="zeros", bias_init="zeros" if bias else None)
        self.bn = _FrozenBatchNorm(out_channels) if batch_norm else None

    def construct(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        if self.relu:
            x = ops.relu(x)
        return x


class MaxPool3dSamePadding(nn.Cell):
    """Max-pooling after "same" zero padding (zeros, as the reference pads; its inputs are ReLU outputs)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.pool = nn.MaxPool3d(kernel_size=self.kernel, stride=self.stride, pad_mode="valid")

    def construct(self, x):
        return self.pool(_pad_same(x, self.kernel, self.stride))


class InceptionModule(nn.Cell):
    """Four branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max-pool -> 1x1."""

    def __init__(self, in_channels, widths):
        super().__init__()
        self.b0 = Unit3D(in_channels, widths[0])
        self.b1a = Unit3D(in_channels, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSamePadding((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, widths[5])

    def construct(self, x):
        return ops.cat((self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))), axis=1)


# --------------------------------------------------------------------------------------- model
# (name, in channels, branch widths) of the Inception modules, in order
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Cell):
    """InceptionI3d(400, in_channels=3) in evaluation mode: (B, 3, T, 224, 224) in [-1, 1] -> (B, 400),
    the logits averaged over the remaining time steps."""

    def __init__(self, num_classes=I3D_CLASSES):
        super().__init__()
        prefer_avx2_onednn()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSamePadding((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionModule(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionModule(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionModule(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionModule(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSamePadding((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*_MIXED["Mixed_5c"])
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1), pad_mode="valid")
        self.logits = Unit3D(1024, num_classes, batch_norm=False, relu=False, bias=True)

    def construct(self, x):
        x = self.Conv3d_1a_7x7(x)  # (B, 64, T/2, 112, 112)
        x = self.MaxPool3d_2a_3x3(x)  # (B, 64, T/2, 56, 56)
        x = self.Conv3d_2b_1x1(x)
        x = self.Conv3d_2c_3x3(x)  # (B, 192, T/2, 56, 56)
        x = self.MaxPool3d_3a_3x3(x)  # (B, 192, T/2, 28, 28)
        x = self.Mixed_3b(x)  # (B, 256, ...)
        x = self.Mixed_3c(x)  # (B, 480, ...)
        x = self.MaxPool3d_4a_3x3(x)  # (B, 480, T/4, 14, 14)
        x = self.Mixed_4b(x)
        x = self.Mixed_4c(x)
        x = self.Mixed_4d(x)
        x = self.Mixed_4e(x)
        x = self.Mixed_4f(x)  # (B, 832, T/4, 14, 14)
        x = self.MaxPool3d_5a_2x2(x)  # (B, 832, T/8, 7, 7)
        x = self.Mixed_5b(x)
        x = self.Mixed_5c(x)  # (B, 1024, T/8, 7, 7)
        x = self.logits(self.avg_pool(x))  # (B, 400, T/8 - 1, 1, 1); dropout is the identity in evaluation
        return x.mean(axis=(2, 3, 4))  # (B, 400): averaged over time


# ------------------------------------------------------------------------------------- loading
def load_i3d(path):
    """An InceptionI3d with the weights of `path` (a `torch.save` state dict such as
    `i3d_pretrained_400.pt`, or .safetensors / .ckpt of the same names). A file that is not this I3D
    is a CheckpointError naming its missing, unexpected and misshaped keys. BatchNorm's
    `num_batches_tracked` counters are not weights and are ignored."""
    state = {name: value for name, value in read_state_dict(path).items()
             if not name.endswith("num_batches_tracked")}
    model = InceptionI3d()
    set_weights(model, state, f"{path} (not an InceptionI3d(400) state dict such as i3d_pretrained_400.pt)")
    model.set_train(False)
    return model
