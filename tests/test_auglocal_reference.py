"""AugLocal against the authors' code (github.com/ChenxiangMA/AugLocal), re-expressed here.

What the authors' code does, in our words (their `train.py`, `networks/resnet.py`,
`networks/auxiliary_nets.py`, `networks/configs.py`):

- depth: their `aux_net_depth` c is the number of copied layers; the paper's d = c + 1 counts the
  linear classifier too (section 4.1, A.6: "d = 6 equals the depth of DGL").
- layout: with one local module per layer (L of them) and AugLocal, the number of local modules
  is lowered by c, K = L - c; the first K - 1 layers (0 .. K-2) get auxiliary nets and everything
  after them is trained with the primary classifier.
- pyramidal depth: the auxiliary net of local module i (0 .. K-2) copies
  max(1, round(c * (1 - i * tau / (K-2)) + i * tau / (K-2))) layers; tau = 0.5 in their scripts.
- selection for module i of depth c_i: every later layer if c_i >= L-1-i, else
  round(i + (L-i-1) / c_i * m) for m = 1..c_i, in floating point, Python's round.
- classifier: global average pooling, flatten, then a BatchNorm1d only when c_i <= 1, then linear.
- strides: a pending count grows by log2 of the channel ratio between neighbouring copies; a copy
  strides (2) while the count is positive, using up one.

These formulas are written out below independently of locallearn/auxnets.py and compared with what
the rule builds; Table 7 and Figure 5 of the paper check the FLOP counts.
"""
import json
import math

import pytest
import torch.nn as nn

from locallearn import Trainer, auxnets
from locallearn.analyze.aux_flops import aux_flops_table
from locallearn.cli import main
from locallearn.models import create_model
from locallearn.models.resnet_cifar import BasicBlock
from locallearn.rules import RULES

from helpers import tiny_config

RESNET32_LAYERS, RESNET110_LAYERS = 16, 55


# ------------------------------------------------------------------ the authors' formulas, restated
def authors_module_count(n_layers: int, copies: int) -> int:
    return n_layers - copies


def authors_copies_per_module(copies: int, tau: float, n_modules: int) -> list[int]:
    """Copied layers of the auxiliary nets of modules 0 .. K-2 (tau = 0: no pyramid)."""
    if tau == 0:
        return [copies] * (n_modules - 1)
    result = []
    for i in range(n_modules - 1):
        share = i * tau / (n_modules - 2)
        result.append(max(1, round(copies * (1 - share) + share * 1)))
    return result


def authors_selection(layer: int, n_layers: int, copies: int) -> list[int]:
    remaining = n_layers - layer - 1
    if copies >= remaining:
        return list(range(layer + 1, n_layers))
    return [round(layer + remaining / copies * m) for m in range(1, copies + 1)]


def authors_strides(channels_in: int, channels_of_copies: list[int]) -> list[int]:
    pending, strides, previous = 0, [], channels_in
    for channels in channels_of_copies:
        pending += int(math.log2(channels // previous))
        strides.append(2 if pending >= 1 else 1)
        pending -= 1 if pending >= 1 else 0
        previous = channels
    return strides


def one_per_layer(n_layers: int) -> list[range]:
    return [range(j, j + 1) for j in range(n_layers)]


# ---------------------------------------------------------------------------------- the layout
@pytest.mark.parametrize("n_layers", [RESNET32_LAYERS, RESNET110_LAYERS])
def test_layout_depths_and_selections_equal_the_authors(n_layers):
    for copies in range(1, 10):
        for tau in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            rule = RULES.get("auglocal")(aux_depth=copies + 1, pyramid_decay=tau)  # the paper's d
            modules = rule.arrange_modules(one_per_layer(n_layers), n_layers)
            n_modules = authors_module_count(n_layers, copies)
            assert len(modules) == n_modules, (copies, tau)
            assert modules[:-1] == one_per_layer(n_layers)[:n_modules - 1]
            assert modules[-1] == range(n_modules - 1, n_layers)  # trains with the primary classifier
            expected = authors_copies_per_module(copies, tau, n_modules)
            got = [rule.copies_of(k, n_modules) for k in range(n_modules - 1)]
            assert got == expected, (copies, tau)
            assert [rule.depth_of(k, n_modules) for k in range(n_modules - 1)] == [c + 1 for c in expected]
            for layer, c in enumerate(expected):
                assert auxnets.selected_indices("uniform", layer, n_layers, c) == \
                    authors_selection(layer, n_layers, c), (copies, tau, layer)


def test_where_the_former_formula_differed():
    # ResNet-32, 3 copies (paper d = 4), tau = 0.5: K = 13; module 6 sits at 6/11 of the way, not
    # at 6/14: 3 (1 - 3/11) + 3/11 = 2.45 -> 2 copies (the former j/(L-2) gave 2.57 -> 3)
    rule = RULES.get("auglocal")(aux_depth=4, pyramid_decay=0.5)
    assert len(rule.arrange_modules(one_per_layer(16), 16)) == 13
    assert rule.copies_of(6, 13) == 2 and rule.depth_of(6, 13) == 3
    # ResNet-110, 4 copies (paper d = 5), tau = 0.5: K = 51, module 17: 4 - 3 * 8.5/49 = 3.48 -> 3
    assert RULES.get("auglocal")(aux_depth=5).copies_of(17, 51) == 3


def test_other_splits_merge_the_modules_whose_net_would_copy_everything_after_them():
    # 16 layers cut 3,3,3,3,2,2 with 4 copies: modules ending at 11 and 13 would copy all later layers
    ranges = [range(0, 3), range(3, 6), range(6, 9), range(9, 12), range(12, 14), range(14, 16)]
    rule = RULES.get("auglocal")(aux_depth=5)
    assert rule.arrange_modules(ranges, 16) == ranges[:3] + [range(9, 16)]
    layer_rule = RULES.get("auglocal")(aux_depth=5, aux_layout="layer")
    assert layer_rule.arrange_modules(ranges, 16) == ranges


# ------------------------------------------------------------------------------- the networks
def _linear_and_what_precedes_it(classifier: nn.Module) -> tuple[nn.Linear, nn.Module | None]:
    leaves = [m for m in classifier.modules() if not list(m.children())]
    return leaves[-1], leaves[-2] if len(leaves) > 1 else None


def test_the_run_builds_the_authors_modules_heads_strides_and_classifiers():
    model_kwargs = {"width": 4}
    trainer = Trainer(tiny_config(method="auglocal", model="resnet32", split="layer", modules=None,
                                  model_kwargs=model_kwargs, rule_options={"aux_depth": 4, "pyramid_decay": 1.0}))
    model, copies = trainer.net.model, 3
    n_modules = authors_module_count(RESNET32_LAYERS, copies)
    assert len(trainer.net) == n_modules
    assert trainer.net[-1].layer_range == range(n_modules - 1, RESNET32_LAYERS)
    assert trainer.net[-1].head is model.classifier
    per_module = authors_copies_per_module(copies, 1.0, n_modules)
    assert 1 in per_module and 3 in per_module  # both kinds of classifier occur
    for module, c in zip(trainer.net.local_modules[:-1], per_module):
        j = module.layer_range.stop - 1
        indices = authors_selection(j, RESNET32_LAYERS, c)
        blocks, classifier = list(module.head)[:-1], module.head[-1]
        channels = [model.layer_shapes[i][0] for i in indices]
        assert [b.conv1.out_channels for b in blocks] == channels
        assert all(isinstance(b, BasicBlock) for b in blocks)
        assert [b.conv1.stride[0] for b in blocks] == authors_strides(model.layer_shapes[j][0], channels)
        linear, before = _linear_and_what_precedes_it(classifier)
        assert isinstance(linear, nn.Linear) and linear.in_features == channels[-1]
        if c <= 1:
            assert isinstance(before, nn.BatchNorm1d) and before.num_features == linear.in_features
        else:
            assert not any(isinstance(m, nn.BatchNorm1d) for m in classifier.modules())


def test_paper_depth_two_is_one_copied_layer_and_a_normalised_classifier():
    model = create_model("resnet32", (3, 8, 8), 10, width=4)
    rule = RULES.get("auglocal")(aux_depth=2, pyramid_decay=0.0)
    rule.arrange_modules(one_per_layer(RESNET32_LAYERS), RESNET32_LAYERS)
    head = rule.build_head(model, 0, range(0, 1), "linear", {})
    trainable = [m for m in head.modules() if isinstance(m, (BasicBlock, nn.Linear))]
    assert [type(m) for m in trainable] == [BasicBlock, nn.Linear]  # d = 2 trainable layers
    assert isinstance(_linear_and_what_precedes_it(head[-1])[1], nn.BatchNorm1d)


# ------------------------------------------------------------------------- Table 7 and Figure 5
TABLE7_GMACS = {2: 0.63, 3: 0.69, 4: 0.80, 5: 0.98, 6: 1.13}  # ResNet-110, CIFAR-10, tau = 0.5


def test_resnet110_forward_gmacs_match_table7(tmp_path):
    out = tmp_path / "table7.json"
    assert main(["analyze", "aux-flops", "--model", "resnet110", "--layout", "authors", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["layout"], r["depth"], r["tau"]) for r in rows] == \
        [("resnet110", "authors", d, 0.5) for d in TABLE7_GMACS]
    for row in rows:
        assert row["gmacs_total"] == pytest.approx(TABLE7_GMACS[row["depth"]], rel=0.02), row["depth"]
        assert row["aux_percent"] == pytest.approx(100 * row["aux_flops"] / row["main_flops"])


def test_resnet110_pyramid_saves_45_percent_at_depth_9_and_full_decay():
    # Figure 5 / section 4.4: "a 45% reduction in FLOPs" of the auxiliary nets at d = 9, tau = 1
    model = create_model("resnet110", (3, 32, 32), 10)
    (row,) = aux_flops_table(model, one_per_layer(RESNET110_LAYERS), depths=[9], decays=[1.0])
    assert row["pyramid_saving_percent"] == pytest.approx(45.0, abs=1.0)
