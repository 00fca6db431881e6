"""FLOPs of AugLocal's auxiliary networks, with and without pyramidal depth (Table 7, Figure 5).

    locallearn analyze aux-flops --model resnet110 --input-shape 3x32x32 --aux-depth 5,6,7,8,9 \\
        --pyramid-decay 0.6,0.7,0.8,0.9,1.0

For every auxiliary depth d and decay tau, the auxiliary networks of all modules but the last are
built exactly as `--method auglocal` builds them, and the forward FLOPs of one sample through
all of them are summed (torch.utils.flop_counter: 2 FLOPs per multiply-add, convs and matmuls),
then reported as a ratio to the primary network's forward FLOPs, and as the reduction that
pyramidal depth gives: 1 - FLOPs(tau) / FLOPs(tau = 0), the quantity of Figure 5.
"""
from __future__ import annotations

from .. import auxnets
from ..checkpointing import save_json
from ..cli import parse_kwargs
from ..errors import UserError
from ..models import create_model
from ..rules import RULES
from ..split import split_layers
from . import ANALYSES, Analysis


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} needs at least one value")
    return values


def aux_flops_table(model, ranges: list[range], depths: list[int], decays: list[float], min_depth: int = 1,
                    selection: str = "uniform") -> list[dict]:
    """One row per (d, tau): the auxiliary FLOPs, their ratio to the main network, and the saving
    of pyramidal depth against the same d without it."""
    main = auxnets.forward_flops(model, model.input_shape)
    n_layers = len(model.layers)
    cache: dict[tuple[int, int], int] = {}

    def flops_of(j: int, depth: int) -> int:
        if (j, depth) not in cache:
            aux = auxnets.build_aux_net(model, j, depth, selection)
            cache[j, depth] = auxnets.forward_flops(aux, model.layer_shapes[j])
        return cache[j, depth]

    rows = []
    for depth in depths:
        flat = None
        for decay in [0.0] + [t for t in decays if t != 0.0]:
            rule = RULES.get("auglocal")(aux_depth=depth, pyramid_decay=decay, min_depth=min_depth,
                                         aux_selection=selection)
            module_depths = [rule.depth_of(r.stop - 1, n_layers) for r in ranges[:-1]]
            total = sum(flops_of(r.stop - 1, d) for r, d in zip(ranges[:-1], module_depths))
            flat = total if decay == 0.0 else flat
            rows.append({"aux_depth": depth, "pyramid_decay": decay, "depths": module_depths, "main_flops": main,
                         "aux_flops": total, "aux_ratio": total / main,
                         "reduction": 1 - total / flat if flat else 0.0})
    return rows


@ANALYSES.register("aux-flops")
class AuxFlops(Analysis):
    help = "FLOPs of AugLocal's auxiliary networks with and without pyramidal depth, as a ratio to the model"

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("--model", default="resnet110", help="model name (default: resnet110)")
        parser.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="extra model arguments")
        parser.add_argument("--input-shape", default="3x32x32", help="shape of one input (default: 3x32x32)")
        parser.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
        parser.add_argument("--split", default="layer", help="how the model is cut into modules (default: layer)")
        parser.add_argument("--modules", type=int, default=None, help="K for --split even")
        parser.add_argument("--aux-depth", default="2,3,4,5,6", help="comma-separated depths d (default: 2,3,4,5,6)")
        parser.add_argument("--pyramid-decay", default="0.5",
                            help="comma-separated decays tau to compare with tau = 0 (default: 0.5; "
                                 "Figure 5: 0.6,0.7,0.8,0.9,1.0)")
        parser.add_argument("--min-depth", type=int, default=1, help="minimum depth of pyramidal depth (default: 1)")
        parser.add_argument("--aux-selection", default="uniform", choices=auxnets.SELECTIONS,
                            help="layer selection (default: uniform)")
        parser.add_argument("--output", default=None, help="also write the table to this JSON file")

    def run(self, args) -> int:
        try:
            shape = tuple(int(v) for v in args.input_shape.split("x"))
        except ValueError:
            raise UserError(f"--input-shape expects sizes like 3x32x32, got {args.input_shape!r}") from None
        depths = _numbers(args.aux_depth, int, "--aux-depth")
        decays = _numbers(args.pyramid_decay, float, "--pyramid-decay")
        model = create_model(args.model, shape, args.classes, **parse_kwargs(args.model_kwargs, "--model-kwargs"))
        ranges = split_layers(len(model.layers), model.stages, args.split,
                              args.modules if args.split == "even" else None, args.model)
        if len(ranges) < 2:
            raise UserError("with one module there is no auxiliary network; use --split layer or more --modules")
        rows = aux_flops_table(model, ranges, depths, decays, args.min_depth, args.aux_selection)
        main = rows[0]["main_flops"]
        print(f"{args.model} on {args.input_shape}: {len(ranges)} modules, {len(ranges) - 1} auxiliary networks; "
              f"main network {main / 1e9:.4f} GFLOPs ({main / 2e9:.4f} GMACs) per sample, forward")
        print(f"{'d':>3} {'tau':>5} {'aux GFLOPs':>11} {'aux/main':>9} {'saved by pyramid':>17}  depths per module")
        for row in rows:
            print(f"{row['aux_depth']:>3} {row['pyramid_decay']:>5.2f} {row['aux_flops'] / 1e9:>11.4f} "
                  f"{100 * row['aux_ratio']:>8.1f}% {100 * row['reduction']:>16.1f}%  {row['depths']}")
        if args.output:
            save_json({"model": args.model, "input_shape": shape, "split": args.split, "rows": rows}, args.output)
            print(f"wrote {args.output}")
        return 0
