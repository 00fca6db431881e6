"""InfoPro (Wang et al., ICLR 2021) as AugLocal's baseline: the `infopro` objective, cross-entropy + a
reconstruction loss, and the `infopro` preset (objective infopro x coupling none x back-propagation).

Module k < K-1 minimises   lambda_x(k) * L_recon(k) + lambda_y(k) * CE(k)   where

- CE is the cross-entropy of InfoPro's "1c2f" auxiliary classifier: 3x3 conv (to the next stage's
  width with stride 2, or the same width with stride 1 in the last stage) -> BN -> ReLU -> global
  average pooling -> FC(128) -> ReLU -> FC(classes);
- L_recon is the binary cross-entropy between the decoder's reconstruction of the *input image*
  and the image mapped to [0, 1]: the features are upsampled (bilinear, align_corners) to the
  image size, then 3x3 conv (12 channels) -> BN -> ReLU -> 3x3 conv (image channels) -> sigmoid;
- the weights move linearly from (lambda_x, lambda_y) = (recon_weight_first, ce_weight_first) at
  module 0 to (recon_weight_last, ce_weight_last) at module K-2; the defaults (5, 0.05) -> (0.2, 0.5)
  are InfoPro's (and AugLocal's) setting for ResNet-32 with K = 16.

The image every module reconstructs travels in the `message` of `module_step` (`needs_image`):
module 0 reads it as its input and hands it on, as a pipeline stage would send it downstream.
The decoder and `WithDecoder` are shared with AugLocal + InfoPro (Table 13).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..models import LayeredModel
from ..models.common import batchnorm, conv, global_pool_flatten, init_weights
from ..network import LocalModule, ModularNet
from .backprop import LocalRule
from .base import Stats, option, record
from .objective import IMAGE, Objective
from .registry import OBJECTIVES, RULES


def reconstruction_target(image: torch.Tensor) -> torch.Tensor:
    """The image mapped to [0, 1] per channel by the batch's minimum and maximum.

    InfoPro undoes the CIFAR normalisation to get the [0, 1] image back; the rules here do not see
    the dataset's statistics, and the batch's per-channel range gives the same image for 8-bit
    data (an affine map of it) and a valid target for any other data.
    """
    dims = [0] + list(range(2, image.dim()))
    low = image.amin(dim=dims, keepdim=True)
    high = image.amax(dim=dims, keepdim=True)
    return ((image - low) / (high - low).clamp_min(1e-12)).detach()


class ReconstructionDecoder(nn.Module):
    """InfoPro's decoder ("2c"): upsample to the image size, 3x3 conv -> BN -> ReLU -> 3x3 conv -> sigmoid.

    Flat features (an MLP's layers), or features whose dimensionality differs from the image's,
    are decoded by the same two layers as linear maps, reshaped to the image."""

    def __init__(self, feature_shape, image_shape, width: int = 12):
        super().__init__()
        self.image_shape = tuple(image_shape)
        dims = len(feature_shape) - 1
        self.upsample = dims > 0 and dims == len(image_shape) - 1
        if self.upsample:
            self.net = nn.Sequential(conv(dims, feature_shape[0], width, 3, bias=True), batchnorm(dims, width),
                                     nn.ReLU(inplace=True), conv(dims, width, image_shape[0], 3, bias=True))
        else:
            self.net = nn.Sequential(nn.Flatten(1), nn.Linear(math.prod(feature_shape), width), nn.BatchNorm1d(width),
                                     nn.ReLU(inplace=True), nn.Linear(width, math.prod(image_shape)),
                                     nn.Unflatten(1, self.image_shape))
        for m in self.modules():  # He init as the authors'; unlike init_weights, the biases keep PyTorch's init
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The reconstruction before the sigmoid."""
        if self.upsample:
            mode = "bilinear" if features.dim() == 4 else "linear"
            features = F.interpolate(features, size=self.image_shape[1:], mode=mode, align_corners=True)
        return self.net(features)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # BCE(sigmoid(z), t), computed from the logits z for numerical stability
        return F.binary_cross_entropy_with_logits(self.logits(features), reconstruction_target(image))


class WithDecoder(nn.Module):
    """An auxiliary classifier plus a reconstruction decoder; called, it gives the logits."""

    def __init__(self, classifier: nn.Module, decoder: ReconstructionDecoder):
        super().__init__()
        self.classifier, self.decoder = classifier, decoder

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def reconstruction_loss(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(features, image)


def infopro_classifier(model: LayeredModel, j: int, hidden: int = 128) -> nn.Sequential:
    """InfoPro's "1c2f" auxiliary classifier for the output of layer j (see the module docstring)."""
    shape = model.layer_shapes[j]
    channels, dims = shape[0], len(shape) - 1
    wider = [s[0] for s in model.layer_shapes[j + 1:] if s[0] > channels]
    width, stride = (wider[0], 2) if wider else (channels, 1)
    net = nn.Sequential(conv(dims, channels, width, 3, stride), batchnorm(dims, width), nn.ReLU(inplace=True),
                        global_pool_flatten(dims), nn.Linear(width, hidden), nn.ReLU(inplace=True),
                        nn.Linear(hidden, model.num_classes))
    init_weights(net)
    return net


def linear_schedule(first: float, last: float, k: int, n_modules: int) -> float:
    """first at module 0, last at module K-2 (the last with an auxiliary loss), linear between."""
    ratio = k / (n_modules - 2) if n_modules > 2 else 0.0
    return first * (1 - ratio) + last * ratio


@OBJECTIVES.register("infopro")
@dataclass
class InfoProObjective(Objective):
    """Every module but the last minimises lambda_x * reconstruction + lambda_y * cross-entropy."""

    name = "infopro"
    summary = "InfoPro: cross-entropy + reconstruction of the input image (weights scheduled over the modules)"
    needs_image = True

    recon_weight_first: float = option(5.0, "InfoPro: weight of the reconstruction loss at the first module")
    recon_weight_last: float = option(0.2, "InfoPro: weight of the reconstruction loss at module K-2")
    ce_weight_first: float = option(0.05, "InfoPro: weight of the cross-entropy at the first module")
    ce_weight_last: float = option(0.5, "InfoPro: weight of the cross-entropy at module K-2")
    infopro_hidden: int = option(128, "InfoPro: hidden units of the auxiliary classifier's MLP")

    def __post_init__(self):
        for name in ("recon_weight_first", "recon_weight_last", "ce_weight_first", "ce_weight_last"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be zero or positive, got {value}")
        if not isinstance(self.infopro_hidden, int) or self.infopro_hidden < 1:
            raise UserError(f"--infopro-hidden must be a positive whole number, got {self.infopro_hidden}")
        self.n_modules = 0

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        # --head does not apply: InfoPro has its own classifier and decoder
        j = layers.stop - 1
        return WithDecoder(infopro_classifier(model, j, self.infopro_hidden),
                           ReconstructionDecoder(model.layer_shapes[j], model.input_shape))

    def setup(self, net: ModularNet) -> None:
        self.n_modules = len(net)

    def loss_weights(self, k: int) -> tuple[float, float]:
        """(lambda_x, lambda_y) of module k."""
        return (linear_schedule(self.recon_weight_first, self.recon_weight_last, k, self.n_modules),
                linear_schedule(self.ce_weight_first, self.ce_weight_last, k, self.n_modules))

    def local_loss(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor,
                   message: dict, stats: Stats) -> torch.Tensor:
        logits = module.head(outputs)
        cross_entropy = F.cross_entropy(logits, y)
        if module.is_last:
            loss = cross_entropy
        else:
            reconstruction = module.head.reconstruction_loss(outputs, message[IMAGE])
            recon_weight, ce_weight = self.loss_weights(module.index)
            loss = recon_weight * reconstruction + ce_weight * cross_entropy
            stats[f"recon/{module.index}"] = reconstruction.detach()
            stats[f"ce/{module.index}"] = cross_entropy.detach()
        record(stats, module.index, loss, logits, y)
        return loss


@RULES.register("infopro")
class InfoPro(LocalRule):
    """InfoPro as AugLocal's baseline trains it: objective infopro x coupling none x back-propagation."""

    name = "infopro"
    summary = "InfoPro: local cross-entropy + reconstruction of the input image (AugLocal's baseline)"
    default_objective = "infopro"
