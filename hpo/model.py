"""airbench94's CIFAR-10 convnet: a 2x2 stem, three conv groups, max-pool head, dropout, scaled linear logits.

Read top to bottom: ``Net`` is the architecture, ``whiten_stem`` fills the frozen whitening stem from
training images, ``parameter_groups`` says which parameters get which learning rate.
"""

from __future__ import annotations

import torch
from torch import nn

from hpo.config import TrainConfig

WHITEN_EPS = 5e-4  # keeps the near-zero-variance patch directions from being amplified without bound
WHITEN_IMAGES = 5000  # training images whose patches estimate the covariance (airbench's number)


class ConvGroup(nn.Sequential):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU: pooling early keeps the second conv cheap."""

    def __init__(self, c_in: int, c_out: int, config: TrainConfig) -> None:
        super().__init__(
            conv3x3(c_in, c_out, config),
            nn.MaxPool2d(2),
            batch_norm(c_out, config),
            nn.GELU(),
            conv3x3(c_out, c_out, config),
            batch_norm(c_out, config),
            nn.GELU(),
        )


def conv3x3(c_in: int, c_out: int, config: TrainConfig) -> nn.Conv2d:
    """A 3x3 conv; with ``dirac_init`` its first ``c_in`` filters start as the identity (PyTorch's init for the
    rest), so the deep net starts close to a shallow one."""
    conv = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
    if config.dirac_init:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def batch_norm(channels: int, config: TrainConfig) -> nn.BatchNorm2d:
    """BatchNorm whose scale is frozen at 1 unless ``bn_scale``: the following conv can rescale anyway."""
    norm = nn.BatchNorm2d(channels, eps=config.bn_eps, momentum=config.bn_momentum)
    norm.weight.requires_grad_(config.bn_scale)
    return norm


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.4g}"


class Net(nn.Sequential):
    def __init__(self, config: TrainConfig, num_classes: int = 10) -> None:
        w1, w2, w3 = config.widths
        stem = nn.Conv2d(3, config.stem_width, 2, bias=True)  # 32 -> 31 px: almost free, lifts the channels early
        if config.whiten:
            stem.weight.requires_grad_(False)  # set once from the data by whiten_stem; only the bias trains
        head = nn.Linear(w3, num_classes, bias=False)
        super().__init__(
            stem,
            nn.GELU(),
            ConvGroup(config.stem_width, w1, config),
            ConvGroup(w1, w2, config),
            ConvGroup(w2, w3, config),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            head,
            # Scaling the logits down lets the large lr that suits the BN'd convs train the un-normalised head.
            Scale(config.logit_scale),
        )
        if config.head_init == "small":  # after the other layers' init, so the switch changes only the head
            nn.init.normal_(head.weight, std=0.01)

    @property
    def stem(self) -> nn.Conv2d:
        return self[0]


def patches(images: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Every ``size`` x ``size`` patch of float images (N, C, H, W), flattened to rows of C*size*size."""
    c = images.shape[1]
    windows = images.unfold(2, size, 1).unfold(3, size, 1)  # N, C, H', W', size, size
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


@torch.no_grad()
def whiten_stem(stem: nn.Conv2d, images: torch.Tensor) -> None:
    """Make the stem's filters whiten the images' patches: the first half project a patch onto the top
    eigenvectors of the patch covariance, divided by the root of their eigenvalues; the second half are their
    negatives, so GELU passes both signs. ``images`` are normalised floats."""
    k = stem.kernel_size[0]
    rows = patches(images.float(), k)
    covariance = rows.T @ rows / len(rows)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    top = stem.out_channels // 2
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:top], eigenvectors.flip(1)[:, :top]
    filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS)[:, None]).reshape(top, images.shape[1], k, k)
    stem.weight.copy_(torch.cat([filters, -filters]).to(stem.weight))
    stem.bias.zero_()  # whitened patches are centred already; the bias learns any shift GELU wants


def parameter_groups(model: Net, config: TrainConfig) -> list[dict]:
    """SGD parameter groups: BatchNorm parameters at ``bias_lr_scale`` x lr (weight decay divided by the same, so
    lr x decay is unchanged), everything else at the config's lr. Frozen parameters are left out."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    norms = [p for p in trainable if id(p) in norm_params]
    others = [p for p in trainable if id(p) not in norm_params]
    scale = config.bias_lr_scale
    return [
        {"params": norms, "lr": config.lr * scale, "weight_decay": config.weight_decay / scale},
        {"params": others},
    ]


def build_model(config: TrainConfig, device: torch.device | str = "cpu", channels_last: bool = False) -> Net:
    model = Net(config).to(device)
    if channels_last:
        # channels_last lets cuDNN use its NHWC tensor-core kernels, and oneDNN its faster CPU kernels.
        model = model.to(memory_format=torch.channels_last)
    return model
