"""Forward cost of AugLocal's auxiliary networks, with and without pyramidal depth (Table 7, Figure 5).

    locallearn analyze aux-flops --model resnet110                     # Table 7: d = 2..6 at tau = 0.5
    locallearn analyze aux-flops --model resnet110 --aux-depth 5,6,7,8,9 \\
        --pyramid-decay 0.6,0.7,0.8,0.9,1.0                            # Figure 5

For every depth d (the paper's unit: copied layers + the classifier) and decay tau, the modules
are laid out and the auxiliary networks built exactly as `--method auglocal` does (`--layout`
authors or layer), and the forward FLOPs of one sample through the primary network and all
auxiliary networks are counted (torch.utils.flop_counter: convs and matmuls). Reported: the total
in GMACs (multiply-adds, the paper's unit: FLOPs / 2), the auxiliary networks' share of the
primary network's cost, and the saving of pyramidal depth, 1 - aux(tau) / aux(tau = 0), the
quantity of Figure 5.
"""
from __future__ import annotations

import math

from .. import auxnets
from ..checkpointing import save_json
from ..config import parse_kwargs
from ..errors import UserError
from ..memory import check_memory
from ..models import create_model
from ..rules import RULES
from ..split import split_layers
from . import ANALYSES, Analysis, check_output

TABLE7_DEPTHS = "2,3,4,5,6"


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} needs at least one value")
    return values


def aux_flops_table(model, ranges: list[range], depths: list[int], decays: list[float], min_depth: int = 2,
                    selection: str = "uniform", layout: str = "authors") -> list[dict]:
    """One row per (d, tau), d in the paper's unit: the modules and their auxiliary depths, the
    FLOPs of the primary network and of all auxiliary networks, and the saving of pyramidal depth
    against the same d and layout without it."""
    main = auxnets.forward_flops(model, model.input_shape)
    n_layers = len(model.layers)
    cache: dict[tuple[int, int], int] = {}

    def flops_of(j: int, n_copies: int) -> int:
        if (j, n_copies) not in cache:
            aux = auxnets.build_aux_net(model, j, n_copies, selection)
            cache[j, n_copies] = auxnets.forward_flops(aux, model.layer_shapes[j])
        return cache[j, n_copies]

    def aux_cost(depth: int, decay: float) -> tuple[list[int], list[range], int]:
        rule = RULES.get("auglocal")(aux_depth=depth, pyramid_decay=decay, min_depth=min_depth,
                                     aux_layout=layout, aux_selection=selection)
        modules = rule.arrange_modules(list(ranges), n_layers)
        with_aux = modules[:-1]
        copies = [rule.copies_of(k, len(modules)) for k in range(len(with_aux))]
        return [c + 1 for c in copies], modules, sum(flops_of(r.stop - 1, c) for r, c in zip(with_aux, copies))

    rows = []
    for depth in depths:
        flat = aux_cost(depth, 0.0)[2]
        for decay in decays:
            module_depths, modules, total = aux_cost(depth, decay)
            rows.append({"depth": depth, "tau": decay, "layout": layout, "modules": len(modules),
                         "module_depths": module_depths, "main_flops": main, "aux_flops": total,
                         "gmacs_total": (main + total) / 2e9, "aux_percent": 100 * total / main,
                         "pyramid_saving_percent": 100 * (1 - total / flat) if flat else 0.0})
    return rows


@ANALYSES.register("aux-flops")
class AuxFlops(Analysis):
    help = ("forward GMACs of a model with AugLocal's auxiliary networks, per depth d and pyramid decay "
            "(default: Table 7's columns, d = 2..6 at tau = 0.5)")

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("--model", default="resnet110", help="model name (default: resnet110)")
        parser.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="extra model arguments")
        parser.add_argument("--input-shape", default="3x32x32", help="shape of one input (default: 3x32x32)")
        parser.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
        parser.add_argument("--split", default="layer", help="how the model is cut into modules (default: layer)")
        parser.add_argument("--modules", type=int, default=None, help="K for --split even")
        parser.add_argument("--layout", "--aux-layout", dest="layout", default="authors", choices=auxnets.LAYOUTS,
                            help="which modules get an auxiliary net, as --aux-layout of auglocal (default: "
                                 "authors: the last d layers train with the primary classifier; layer: every "
                                 "module but the last)")
        parser.add_argument("--aux-depth", default=TABLE7_DEPTHS,
                            help="comma-separated depths d in the paper's unit, the auxiliary net's trainable "
                                 f"layers including its classifier (default: {TABLE7_DEPTHS}, Table 7)")
        parser.add_argument("--pyramid-decay", default="0.5",
                            help="comma-separated decays tau (default: 0.5, Table 7; Figure 5: 0.6,0.7,0.8,0.9,1.0); "
                                 "the saving is measured against tau = 0")
        parser.add_argument("--min-depth", type=int, default=2,
                            help="minimum depth of pyramidal depth, in the unit of --aux-depth (default: 2)")
        parser.add_argument("--aux-selection", default="uniform", choices=auxnets.SELECTIONS,
                            help="layer selection (default: uniform)")
        parser.add_argument("--json", "--output", dest="json", default=None, metavar="FILE",
                            help="also write the rows to this JSON file: a list of {model, layout, depth, tau, "
                                 "gmacs_total, aux_percent, ...}")

    def run(self, args) -> int:
        try:
            shape = tuple(int(v) for v in args.input_shape.split("x"))
        except ValueError:
            raise UserError(f"--input-shape expects sizes like 3x32x32, got {args.input_shape!r}") from None
        if not shape or any(s < 1 for s in shape):
            raise UserError(f"--input-shape needs positive sizes, got {args.input_shape!r}")
        check_memory(4 * math.prod(shape), f"--input-shape {args.input_shape}: one input")
        if args.classes < 2:
            raise UserError(f"--classes must be at least 2, got {args.classes}")
        if args.modules is not None and args.modules < 1:
            raise UserError(f"--modules must be at least 1, got {args.modules}")
        if args.json:
            check_output(args.json, "--json")
        depths = _numbers(args.aux_depth, int, "--aux-depth")
        decays = _numbers(args.pyramid_decay, float, "--pyramid-decay")
        model = create_model(args.model, shape, args.classes, **parse_kwargs(args.model_kwargs, "--model-kwargs"))
        ranges = split_layers(len(model.layers), model.stages, args.split,
                              args.modules if args.split == "even" else None, args.model)
        if len(ranges) < 2:
            raise UserError("with one module there is no auxiliary network; use --split layer or more --modules")
        rows = aux_flops_table(model, ranges, depths, decays, args.min_depth, args.aux_selection, args.layout)
        main = rows[0]["main_flops"]
        print(f"{args.model} on {args.input_shape}, {args.layout} layout, split {args.split}: main network "
              f"{main / 2e9:.4f} GMACs per sample, forward (d: the paper's depth, classifier included)")
        print(f"{'d':>3} {'tau':>5} {'K':>4} {'GMACs total':>12} {'aux/main':>9} {'saved by pyramid':>17}  "
              "depth d per module")
        for row in rows:
            print(f"{row['depth']:>3} {row['tau']:>5.2f} {row['modules']:>4} {row['gmacs_total']:>12.3f} "
                  f"{row['aux_percent']:>8.1f}% {row['pyramid_saving_percent']:>16.1f}%  {row['module_depths']}")
        if args.json:
            save_json([{"model": args.model, **row} for row in rows], args.json)
            print(f"wrote {args.json}")
        return 0
