"""AugLocal (Ma et al., ICLR 2024): the `auglocal` objective, auxiliary networks built from the
primary network's own later layers, and the `auglocal` preset (objective auglocal x coupling none x
back-propagation).

Module k ends with layer j; its auxiliary network g_j is made of fresh copies of the architectures
of d-1 later layers, idx_i = round(j + (L-j-1)/(d-1) * i) (section 3.2), and a copy of the primary
classifier: d trainable layers, the paper's depth. The local loss is the cross-entropy of g_j(h_j)
(section 4.1); under the `auglocal` preset the module trains like every simultaneous local rule
(DGL): forward, local loss, backward, step, detached output to module k+1. As an objective it also
runs with SGR, BackLink or a forward gradient (--coupling, fwdgrad --guess-head auglocal). In the
authors' layout (the default) the top layers, whose auxiliary net would copy all the layers after
them, have none and train with the primary classifier as the last module. Pyramidal depth (eq. 3)
shrinks d linearly over the modules; `aux_selection` gives the Table 5 ablations; `recon_weight`
adds InfoPro's reconstruction loss (Table 13).

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
from .backprop import LocalRule
from .base import Stats, option, record
from .infopro import ReconstructionDecoder, WithDecoder
from .objective import IMAGE, Objective
from .registry import OBJECTIVES, RULES


@OBJECTIVES.register("auglocal")
@dataclass
class AugLocalObjective(Objective):
    """Every module but the last learns from the cross-entropy of its augmented auxiliary network."""

    name = "auglocal"
    summary = ("AugLocal: cross-entropy of an auxiliary net made of copies of uniformly selected later layers "
               "(--aux-depth is the paper's d, classifier included)")

    aux_depth: int = option(3, "AugLocal: the paper's depth d of each auxiliary network: its trainable layers "
                               "INCLUDING the linear classifier, i.e. d-1 copied later layers + classifier "
                               "(>= 2; the paper reports d = 2..6)")
    pyramid_decay: float = option(0.5, "AugLocal: pyramidal-depth decay tau in [0, 1]: the depth falls linearly "
                                       "over the modules, from d at the first to d(1-tau)+tau*d_min at the last "
                                       "module with an auxiliary net (0: off; 0.5 is the authors' setting)")
    min_depth: int = option(2, "AugLocal: smallest depth d_min that pyramidal depth may give, in the unit of "
                               "--aux-depth (classifier included; 2 = one copied layer, the authors' minimum)")
    aux_layout: str = option("authors", "AugLocal: which modules get an auxiliary net: authors (the authors' code: "
                                        "a module whose net would copy all the layers after it gets none and joins "
                                        "the last module, so the last d layers train with the primary classifier; "
                                        "with --split layer K = L-d+1) or layer (every module but the last, our "
                                        "former layout; a deviation)", choices=auxnets.LAYOUTS)
    aux_selection: str = option("uniform", "AugLocal: which later layers make the auxiliary net (Table 5 "
                                           "ablations): uniform (the method), sequential, repetitive, or c11/c33 "
                                           "conv stacks of similar FLOPs", choices=auxnets.SELECTIONS)
    recon_weight: float = option(0.0, "AugLocal: weight of InfoPro's reconstruction loss added to the local "
                                      "cross-entropy (Table 13; 0: off)")

    def __post_init__(self):
        if not isinstance(self.aux_depth, int) or self.aux_depth < 2:
            raise UserError(f"--aux-depth is the paper's d, the auxiliary net's trainable layers including its "
                            f"classifier: a whole number >= 2 (one copied layer + classifier), got {self.aux_depth}")
        if not isinstance(self.min_depth, int) or not 2 <= self.min_depth <= self.aux_depth:
            raise UserError(f"--min-depth must be between 2 and --aux-depth ({self.aux_depth}), got {self.min_depth}")
        if not 0.0 <= self.pyramid_decay <= 1.0:
            raise UserError(f"--pyramid-decay must be between 0 and 1 (the paper ablates 0.6-1.0), "
                            f"got {self.pyramid_decay}")
        if self.aux_layout not in auxnets.LAYOUTS:
            raise UserError(f"unknown --aux-layout {self.aux_layout!r}; choose one of: {', '.join(auxnets.LAYOUTS)}")
        if self.aux_selection not in auxnets.SELECTIONS:
            raise UserError(f"unknown --aux-selection {self.aux_selection!r}; choose one of: "
                            f"{', '.join(auxnets.SELECTIONS)}")
        if not self.recon_weight >= 0.0:
            raise UserError(f"--recon-weight must be zero or positive, got {self.recon_weight}")
        self._n_modules: int | None = None  # K after the layout, set by arrange_modules

    @property
    def needs_image(self) -> bool:
        return self.recon_weight > 0

    @property
    def head_cross_entropy(self) -> bool:
        return self.recon_weight == 0

    @property
    def n_copies(self) -> int:
        """Copied layers of the deepest auxiliary net: the paper's d minus its classifier."""
        return self.aux_depth - 1

    def arrange_modules(self, ranges: list[range], n_layers: int) -> list[range]:
        if self.aux_layout == "authors":
            merged = auxnets.authors_layout(ranges, n_layers, self.n_copies)
            if len(merged) == 1 < len(ranges):
                raise UserError(f"--aux-depth {self.aux_depth} leaves no module with an auxiliary net: every "
                                f"module's net would copy all the layers after it; with the authors' layout "
                                f"choose d < {n_layers - (ranges[0].stop - 1)} for this split, or --aux-layout layer")
            ranges = merged
        self._n_modules = len(ranges)
        return ranges

    def copies_of(self, k: int, n_modules: int) -> int:
        """Copied layers in the auxiliary net of module k of K (pyramidal depth, eq. 3)."""
        return auxnets.pyramid_depth(self.n_copies, k, n_modules, self.pyramid_decay, self.min_depth - 1)

    def depth_of(self, k: int, n_modules: int) -> int:
        """The paper's depth d_k (copies + classifier) of module k's auxiliary net."""
        return self.copies_of(k, n_modules) + 1

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        # --head and --head-kwargs do not apply: the auxiliary network is made from the model itself
        if self._n_modules is None:
            raise RuntimeError("AugLocal.arrange_modules must see the modules before their heads are built")
        j = layers.stop - 1
        aux = auxnets.build_aux_net(model, j, self.copies_of(k, self._n_modules), self.aux_selection)
        if self.recon_weight > 0:
            return WithDecoder(aux, ReconstructionDecoder(model.layer_shapes[j], model.input_shape))
        return aux

    def local_loss(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor,
                   message: dict, stats: Stats) -> torch.Tensor:
        logits = module.head(outputs)
        loss = F.cross_entropy(logits, y)
        if self.recon_weight > 0 and not module.is_last:
            reconstruction = module.head.reconstruction_loss(outputs, message[IMAGE])
            stats[f"recon/{module.index}"] = reconstruction.detach()
            loss = loss + self.recon_weight * reconstruction
        record(stats, module.index, loss, logits, y)
        return loss


@RULES.register("auglocal")
class AugLocal(LocalRule):
    """AugLocal as its paper trains it: objective auglocal x coupling none x back-propagation."""

    name = "auglocal"
    summary = ("AugLocal: auxiliary nets made of copies of uniformly selected later layers (use --split layer; "
               "--aux-depth is the paper's d, classifier included)")
    default_objective = "auglocal"
