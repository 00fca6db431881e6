"""AugLocal (Ma et al., ICLR 2024): local learning with auxiliary networks built from the primary
network's own later layers.

Module k ends with layer j; its auxiliary network g_j is made of fresh copies of the architectures
of d later layers, idx_i = round(j + (L-j-1) i / d) (section 3.2), and a copy of the primary
classifier. The local loss is the cross-entropy of g_j(h_j) (section 4.1); the module trains
like every simultaneous local rule (DGL): forward, local loss, backward, step, detached output to
module k+1. Pyramidal depth (eq. 3) shrinks d linearly with the layer index; `aux_selection`
gives the Table 5 ablations; `recon_weight` adds InfoPro's reconstruction loss (Table 13).

The builders live in `locallearn/auxnets.py`; the documentation in `docs/methods/auglocal.md`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import auxnets
from ..errors import UserError
from ..models import LayeredModel
from ..network import LocalModule
from .base import LocalRule, Stats, option, record
from .infopro import ReconstructionDecoder, WithDecoder, step_with_image
from .registry import RULES


@RULES.register("auglocal")
@dataclass
class AugLocal(LocalRule):
    """Every module but the last learns from the cross-entropy of its augmented auxiliary network."""

    name = "auglocal"
    summary = "AugLocal: auxiliary nets made of copies of uniformly selected later layers (use --split layer)"

    aux_depth: int = option(2, "AugLocal: depth d of the auxiliary networks (number of copied later layers)")
    pyramid_decay: float = option(0.5, "AugLocal: pyramidal-depth decay tau in [0, 1]: the depth falls linearly "
                                       "from d at the first layer to d(1-tau)+tau*min at the last (0: off; 0.5 "
                                       "is the authors' setting)")
    min_depth: int = option(1, "AugLocal: smallest auxiliary depth that pyramidal depth may give")
    aux_selection: str = option("uniform", "AugLocal: which later layers make the auxiliary net (Table 5 "
                                           "ablations): uniform (the method), sequential, repetitive, or c11/c33 "
                                           "conv stacks of similar FLOPs", choices=auxnets.SELECTIONS)
    recon_weight: float = option(0.0, "AugLocal: weight of InfoPro's reconstruction loss added to the local "
                                      "cross-entropy (Table 13; 0: off)")

    def __post_init__(self):
        if not isinstance(self.aux_depth, int) or self.aux_depth < 1:
            raise UserError(f"--aux-depth must be a whole number of layers >= 1, got {self.aux_depth}")
        if not isinstance(self.min_depth, int) or not 1 <= self.min_depth <= self.aux_depth:
            raise UserError(f"--min-depth must be between 1 and --aux-depth ({self.aux_depth}), got {self.min_depth}")
        if not 0.0 <= self.pyramid_decay <= 1.0:
            raise UserError(f"--pyramid-decay must be between 0 and 1 (the paper ablates 0.6-1.0), "
                            f"got {self.pyramid_decay}")
        if self.aux_selection not in auxnets.SELECTIONS:
            raise UserError(f"unknown --aux-selection {self.aux_selection!r}; choose one of: "
                            f"{', '.join(auxnets.SELECTIONS)}")
        if not self.recon_weight >= 0.0:
            raise UserError(f"--recon-weight must be zero or positive, got {self.recon_weight}")

    def depth_of(self, j: int, n_layers: int) -> int:
        """The auxiliary depth of the module that ends with layer j (pyramidal depth, eq. 3)."""
        return auxnets.pyramid_depth(self.aux_depth, j, n_layers, self.pyramid_decay, self.min_depth)

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        # --head and --head-kwargs do not apply: the auxiliary network is made from the model itself
        j, n_layers = layers.stop - 1, len(model.layers)
        aux = auxnets.build_aux_net(model, j, self.depth_of(j, n_layers), self.aux_selection)
        if self.recon_weight > 0:
            return WithDecoder(aux, ReconstructionDecoder(model.layer_shapes[j], model.input_shape))
        return aux

    def local_loss(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor,
                   message: dict, stats: Stats) -> torch.Tensor:
        logits = module.head(outputs)
        loss = F.cross_entropy(logits, y)
        if self.recon_weight > 0 and not module.is_last:
            reconstruction = module.head.reconstruction_loss(outputs, message["image"])
            stats[f"recon/{module.index}"] = reconstruction.detach()
            loss = loss + self.recon_weight * reconstruction
        record(stats, module.index, loss, logits, y)
        return loss

    def module_step(self, module: LocalModule, x: torch.Tensor, y: torch.Tensor, message: dict,
                    stats: Stats) -> tuple[torch.Tensor, dict]:
        if self.recon_weight == 0:
            return super().module_step(module, x, y, message, stats)
        return step_with_image(super().module_step, module, x, y, message, stats)
