"""The `locallearn` command: train, bench, list."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

from .config import AMP_DTYPES, DEVICES, OPTIMIZERS, PIPELINE_SCHEDULES, SCHEDULES, TrainConfig, parse_kwargs
from .errors import Interrupted, NonFiniteLoss, UserError

DESCRIPTION = """Local learning for deep networks: train a model as K gradient-isolated modules,
each with its own local loss, and compare methods side by side on the same data and seed."""

EPILOG = """examples:
  locallearn bench                                   # the quick start: bp, dgl, backlink, auglocal on mnist1d
  locallearn train --method dgl --model resnet32 --dataset cifar10 --modules 16 --out runs/r32
  locallearn train --resume --out runs/r32           # continue a stopped run
  locallearn bench --resume --out runs/bench         # continue a stopped bench
  locallearn bench --methods bp,dgl,checkpoint --model resnet110 --dataset synthetic \\
      --dataset-kwargs shape=3x32x32 --modules 4,16 --batch-size 128 --max-steps 3
  locallearn list                                    # every model, head, method and dataset
  locallearn list recipes                            # the papers' setups, each with the table cell it targets
  locallearn train --recipe auglocal-cifar10-resnet32 --out runs/auglocal   # a paper's whole setup in one flag"""


def _list_of(kind: type, name: str):
    """An argparse type: comma-separated values of `kind` (`name` says what they are)."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {name}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one {name}")
        return values
    return parse


_int_list, _float_list = _list_of(int, "integer"), _list_of(float, "number")


def _option_type(annotation) -> type:
    return {"float": float, "int": int, "str": str}.get(str(annotation).replace(" | None", ""), str)


def rule_option_fields() -> dict:
    """option name -> (dataclass field, the parts that take it), over every method, objective and coupling."""
    from .rules.compose import option_fields_by_name, option_owners

    owners = option_owners()
    return {name: (f, owners[name]) for name, f in option_fields_by_name().items()}


def add_rule_options(parser: argparse.ArgumentParser) -> None:
    from .heads import HEADS
    from .rules import COUPLINGS, OBJECTIVES

    compose = parser.add_argument_group(
        "composition (a method is a preset: an objective x a coupling x an estimator; these swap its parts)")
    compose.add_argument("--objective", choices=OBJECTIVES.names(), default=None,
                         help="the local objective of every module instead of the method's, e.g. --method sgr "
                              "--objective auglocal (locallearn list shows which method takes which)")
    compose.add_argument("--coupling", choices=COUPLINGS.names(), default=None,
                         help="the coupling between neighbouring modules instead of the method's, e.g. --method "
                              "auglocal --coupling sgr, --method infopro --coupling backlink, --coupling backlink+sgr")
    compose.add_argument("--guess-head", metavar="NAME", default=None,
                         help="fwdgrad: where the guesses come from, an objective (auglocal, infopro, predsim) or a "
                              f"head ({', '.join(HEADS.names())}; the head objective with that head)")
    group = parser.add_argument_group("options of the parts (each applies to the parts named in its help)")
    for name, (f, owners) in sorted(rule_option_fields().items()):
        flag = "--" + name.replace("_", "-")
        kwargs = {"default": None,
                  "help": f"{f.metadata['help']} [{', '.join(owners)}] (default: {f.default})"}
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(flag, type=_option_type(f.type), choices=choices,
                               metavar=None if choices else name.split("_")[-1].upper(), **kwargs)


def add_run_arguments(parser: argparse.ArgumentParser, bench: bool, defaults: dict | None = None) -> None:
    from .data import AUGMENT_CHOICES, dataset_choices
    from .heads import HEADS
    from .models import model_names
    from .rules import RULES
    from .split import SPLIT_CHOICES

    d = TrainConfig(**(defaults or {}))  # the defaults shown in --help
    what = parser.add_argument_group("what to train")
    what.add_argument("--config", metavar="FILE", help="a JSON file of settings (e.g. the config.json of a run); "
                                                       "flags given on the command line override it")
    what.add_argument("--recipe", metavar="NAME",
                      help="a paper's whole training setup for one table cell (optimizer, lr, batch, epochs, "
                           "schedule, augmentation, model, split, head, the method's options), e.g. "
                           "auglocal-cifar10-resnet32; flags and --config settings given beside it override it, "
                           "and config.json/result.json record both (see: locallearn list recipes)")
    if bench:
        what.add_argument("--methods", default=QUICKSTART_GRID["methods"],
                          help=f"comma-separated methods to compare (default: {QUICKSTART_GRID['methods']}); any of: "
                               f"{', '.join(RULES.names())}. A method may be given in several variants, "
                               f"METHOD:option=value[:option=value...] with its own options, parts (objective=, "
                               f"coupling=, guess-head=), head, split, lr or a model argument model.NAME=VALUE "
                               f"(over --model-kwargs), e.g. "
                               f"dgl,sgr:sgr-lambda=0.1,auglocal:coupling=sgr:sgr-lambda=10; a value a|b|c is a grid "
                               f"whose best setting is chosen on validation accuracy (needs --val-split), e.g. "
                               f"sgr:sgr-lambda=1|10|100:lr=0.02|0.05")
        what.add_argument("--modules", type=_int_list, default=None,
                          help="comma-separated numbers of modules K to try (default: 8); single-module methods "
                               "(bp) run once with K=1")
        what.add_argument("--seeds", type=_int_list, default=None,
                          help="comma-separated seeds; results are averaged (mean +- std) (default: 0,1,2)")
    else:
        what.add_argument("--method", help=f"learning rule (default: {d.method}): a preset of an objective, a coupling "
                                           f"and an estimator, whose objective and coupling --objective and "
                                           f"--coupling swap; one of: {', '.join(RULES.names())}")
        what.add_argument("--modules", type=int, help="number of modules K for --split even or balanced "
                                                      "(default: 1 for bp, else 4)")
        what.add_argument("--seed", type=int, help=f"random seed of weights, data order and augmentation "
                                                   f"(default: {d.seed})")
    what.add_argument("--model", help=f"model name (default: {d.model}); one of: {', '.join(model_names())}")
    what.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE",
                      help="extra model arguments, e.g. width=32 (resnets), widths=(16,32,64) (cnn1d), "
                           "stem=cifar (resnet18-101); a wrong name lists the model's arguments")
    what.add_argument("--split", help=f"how to cut the model into modules (default: {d.split}); one of: "
                                      f"{', '.join(SPLIT_CHOICES)}. balanced: K modules (with --pipeline: stages) "
                                      "of equal time, cut by a profile of the training step taken before "
                                      "training; result.json records the cut as a,b,c")
    what.add_argument("--head", help=f"auxiliary head of every module but the last (default: {d.head}); one of: "
                                     f"{', '.join(HEADS.names())}")
    what.add_argument("--head-kwargs", nargs="*", metavar="KEY=VALUE", help="extra head arguments, e.g. width=128")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help=f"dataset (default: {d.dataset}); one of: {dataset_choices()}")
    data.add_argument("--dataset-kwargs", nargs="*", metavar="KEY=VALUE",
                      help="dataset arguments: mnist1d samples=, seed=; synthetic shape=3x8x8 classes= train= "
                           "test= noise= seed=; mnist, fashion-mnist, kmnist train=N test=N (seeded subsets) "
                           "seed=; npz layout=; image folders size= workers=")
    data.add_argument("--data-dir", help=f"where the named image datasets live (default: {d.data_dir}; MNIST-format "
                                         "ones are also looked for in /usr/share/datasets/<name>)")
    data.add_argument("--download", action="store_true", default=None,
                      help="download a named dataset into --data-dir if it is missing (needs internet and "
                           "torchvision)")
    data.add_argument("--val-split", type=float, metavar="FRACTION",
                      help="hold this fraction of every class out of the training set (seeded by the data alone, "
                           "the same for every run) and report val_top1 beside test_top1 (default: 0, none)")
    data.add_argument("--augment", choices=AUGMENT_CHOICES,
                      help="batch augmentation (default: crop-flip for CIFAR/STL/ImageNet, crop for SVHN and "
                           "MNIST, none for Fashion-MNIST, KMNIST, mnist1d, synthetic and .npz)")
    data.add_argument("--crop-padding", type=int, metavar="PIXELS",
                      help="zero padding before the random crop, i.e. the largest shift (default: 4 for sides of "
                           "32 and more, side // 8 below, at least 1); local-loss jitters Fashion-MNIST by 2")

    opt = parser.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, help=f"epochs (per module for greedy) (default: {d.epochs})")
    opt.add_argument("--max-steps", type=int, help="stop after this many steps (per module for greedy); the test "
                                                   "set is still evaluated at the end (default: no limit)")
    opt.add_argument("--batch-size", type=int, help=f"batch size (default: {d.batch_size})")
    opt.add_argument("--lr", type=float, help=f"base learning rate (default: {d.lr})")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, help=f"optimizer of every module (default: {d.optimizer})")
    opt.add_argument("--momentum", type=float, help=f"SGD momentum (default: {d.momentum})")
    opt.add_argument("--nesterov", action="store_true", default=None,
                     help="SGD with Nesterov momentum (AugLocal's and InfoPro's scripts use it)")
    opt.add_argument("--weight-decay", type=float, help=f"weight decay (default: {d.weight_decay})")
    opt.add_argument("--sched", choices=SCHEDULES, help=f"learning-rate schedule over the steps of a phase "
                                                        f"(default: {d.sched}; step = x0.1 at 50%% and 75%%; "
                                                        "multistep = x--lr-decay at each of --lr-milestones)")
    opt.add_argument("--lr-milestones", type=_float_list, metavar="EPOCHS",
                     help="--sched multistep: comma-separated epochs after which the lr is multiplied by --lr-decay, "
                          "e.g. 100,150,175,188 (local-loss's Fashion-MNIST schedule)")
    opt.add_argument("--lr-decay", type=float, help=f"--sched multistep: factor at each milestone "
                                                    f"(default: {d.lr_decay})")
    opt.add_argument("--warmup-epochs", type=float, help=f"linear warm-up (default: {d.warmup_epochs})")

    run = parser.add_argument_group("running")
    run.add_argument("--device", choices=DEVICES, help=f"where to train (default: {d.device}: cuda if available)")
    run.add_argument("--amp", choices=AMP_DTYPES,
                     help="mixed precision: autocast to bf16, or fp16 with a gradient scaler per module (default: "
                          "full precision)")
    run.add_argument("--channels-last", action="store_true", default=None,
                     help="NHWC memory layout of 2-d convolutions and their inputs, on CUDA (faster on GPUs); "
                          "ignored with a warning on the CPU, where it crashed PyTorch 2.13")
    run.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                     help="torch.compile every layer and head (backend: inductor, or e.g. aot_eager to check); "
                          "what cannot be compiled runs eagerly with a warning (SGR, forward gradients)")
    run.add_argument("--threads", type=int, help="CPU threads (default: the cores this process may use; more "
                                                 "threads than cores is much slower)")
    run.add_argument("--out", help="output directory (default: runs/<time>-<method>-<model>" +
                                   ("; bench writes bench.json, plots and each run's files (runs/<id>/) there"
                                    if bench else "") + ")")
    run.add_argument("--eval-every", type=int, help=f"epochs between test evaluations (default: {d.eval_every})")
    run.add_argument("--no-measure", dest="measure", action="store_false", default=None,
                     help="skip the FLOP and activation-memory measurement at the first step")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                     help="no progress bar (without a terminal, e.g. under nohup or SLURM, the bar is "
                          "replaced by a line on stderr per epoch and at least every minute)")
    if not bench:
        run.add_argument("--resume", action="store_true", default=None,
                         help="continue the run saved in --out (other settings are taken from its checkpoint; "
                              "only --epochs, --max-steps, --device, --threads, logging and the optimisation "
                              "settings --lr, --momentum, --weight-decay, --sched, --warmup-epochs may change, "
                              "e.g. a lower --lr after a non-finite loss; result.json lists the changes)")
        run.add_argument("--checkpoint-every", type=int,
                         help="also checkpoint every N steps (default: at the end of every epoch)")
        run.add_argument("--tensorboard", action="store_true", default=None,
                         help="also write every log.csv column as TensorBoard scalars under OUT/tensorboard "
                              "(needs the tensorboard package: pip install 'locallearn[tensorboard]')")
        dist = parser.add_argument_group("pipeline (one group of modules per process; launch with torchrun "
                                         "--nproc-per-node W -m locallearn train --pipeline ...)")
        dist.add_argument("--pipeline", action="store_true", default=None,
                          help="train as one rank of a torchrun job: stages of contiguous modules, activations "
                               "sent downstream with torch.distributed (gloo on CPU, NCCL on GPU)")
        dist.add_argument("--schedule", choices=PIPELINE_SCHEDULES,
                          help=f"sync: lock-step, for checking; async: stages run ahead (default: {d.schedule})")
        dist.add_argument("--max-staleness", type=int,
                          help=f"async: batches a stage may run ahead of the next (default: {d.max_staleness})")
        dist.add_argument("--data-parallel", type=int,
                          help="replicas per stage, averaging gradients (world size = stages x replicas) "
                               f"(default: {d.data_parallel})")
        dist.add_argument("--dist-timeout", type=float,
                          help=f"seconds before a silent peer is an error (default: {d.dist_timeout})")
    add_rule_options(parser)


# `locallearn bench` with no options is the quick start (README): a narrow 8-layer 1-D CNN on the
# embedded mnist1d, where BP clearly beats DGL at K=8 and BackLink and AugLocal close the gap.
QUICKSTART_GRID = {"methods": "bp,dgl,backlink,auglocal:aux-depth=2", "modules": [8], "seeds": [0, 1, 2]}
QUICKSTART_RUN = {"model": "cnn1d", "model_kwargs": {"widths": (16, 16, 32, 32, 64, 64, 64, 64)}, "head": "linear",
                  "epochs": 10}


def config_from_args(ns: argparse.Namespace, rule_option_names: list[str], defaults: dict | None = None,
                     **overrides) -> tuple[TrainConfig, dict]:
    """The TrainConfig the flags describe, and the flags that were given explicitly. `defaults`
    fill what neither the flags nor a --config file give (a default model brings its kwargs)."""
    given = {}
    for f in fields(TrainConfig):
        value = getattr(ns, f.name, None)
        if value is not None:
            given[f.name] = value
    for name, flag in (("model_kwargs", "--model-kwargs"), ("head_kwargs", "--head-kwargs"),
                       ("dataset_kwargs", "--dataset-kwargs")):
        if name in given:
            given[name] = parse_kwargs(given[name], flag)
    options = {n: getattr(ns, n) for n in rule_option_names if getattr(ns, n, None) is not None}
    if options:
        given["rule_options"] = options
    settings = dict(given)
    if getattr(ns, "config", None):
        settings = {**load_config_file(ns.config), **given}
    # recipes.py: the recipe's settings lie beneath the flags and the --config file, above `defaults`
    if settings.get("recipe"):
        from .recipes import apply_recipe

        settings = apply_recipe(settings["recipe"], settings)
    given.update(overrides)
    settings.update(overrides)
    model_given = "model" in settings
    for key, value in (defaults or {}).items():
        if not (key == "model_kwargs" and model_given):  # the default model's kwargs would not fit another
            settings.setdefault(key, value)
    return TrainConfig(**settings), given


def load_config_file(path: str) -> dict:
    """A JSON object of TrainConfig fields, e.g. the config.json that every run writes."""
    from .checkpointing import read_text

    try:  # a regular file of a sane size: not a FIFO that blocks, not /dev/zero
        settings = json.loads(read_text(Path(path), why="give a JSON file"))
    except (UserError, ValueError) as error:
        raise UserError(f"cannot read --config {path}: {error}") from None
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known) if isinstance(settings, dict) else ["(not a JSON object)"]
    if unknown:
        raise UserError(f"--config {path}: unknown settings {', '.join(unknown)}")
    for name in ("resume", "out", "pipeline"):  # what a config file describes is the run, not where it goes
        settings.pop(name, None)
    return settings


def _default_out(method: str, model: str) -> str:
    return str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{model}")


def cmd_train(ns: argparse.Namespace, rule_option_names: list[str]) -> int:
    from .api import run
    from .checkpointing import resumed_config

    cfg, given = config_from_args(ns, rule_option_names)
    state = None
    if cfg.resume:
        if not cfg.out:
            raise UserError("--resume needs --out DIR, the directory of the run to continue")
        cfg, state = resumed_config(cfg.out, given)
    elif not cfg.out:
        cfg.out = _default_out(cfg.method, cfg.model)
    if cfg.pipeline:
        from .distributed import run_pipeline

        result = run_pipeline(cfg)  # every stage loads its own checkpoint
        if result is None:  # not rank 0
            return 0
    else:
        result = run(cfg, state=state)  # the Python API's path: objects built from the names, then the engine
    print(format_result(result))
    files = ["result.json", "log.csv", "model.pt"] + (["heads.pt"] if result["aux_params"] else [])
    print(f"results in {cfg.out}/ ({', '.join(files)}, checkpoint.pt)")
    return 0


def format_result(r: dict) -> str:
    def mb(v):
        return "n/a" if v is None else f"{v / 2 ** 20:.1f} MiB"

    local = ", ".join("-" if a is None else f"{a:.1f}" for a in r["local_top1"])
    # the first step of a phase is measured (FLOPs, memory) and left out of the timing
    step = "n/a (no unmeasured step)" if r["step_seconds"] is None else f"{1000 * r['step_seconds']:.1f} ms"
    return (f"{r['method']} {r['model']} K={r['modules']} on {r['dataset']}: test top-1 {r['test_top1']:.2f}% "
            f"top-5 {r['test_top5']:.2f}% | local top-1 per module [{local}]\n"
            f"  {r['steps']} steps, median step {step}, train {r['train_seconds']:.1f} s, "
            f"{(r['flops_per_step'] or 0) / 1e9:.3f} GFLOP/step, activations {mb(r['peak_activation_bytes'])}, "
            f"CUDA peak {mb(r['peak_memory_bytes'])}, params {r['params'] / 1e6:.3f}M (+{r['aux_params'] / 1e6:.3f}M aux)")


def cmd_bench(ns: argparse.Namespace, rule_option_names: list[str]) -> int:
    from .bench import recorded_bench, run_bench

    if ns.resume and not ns.out:
        raise UserError("--resume needs --out DIR, the directory of the bench to continue")
    # A resumed bench takes what its bench.json records where no flag is given (as train --resume takes
    # its checkpoint's settings); run_bench refuses given flags that describe another grid. --methods
    # equal to its default counts as not given (argparse cannot tell them apart).
    record = recorded_bench(Path(ns.out)) if ns.resume else None
    grid = record or {**QUICKSTART_GRID, "config": QUICKSTART_RUN, "timing": {"rounds": 5, "steps": 3}}
    # recipes.py: a recipe replaces the quick start's settings, method and K
    if ns.recipe and not record:
        from .recipes import get_recipe

        recipe = get_recipe(ns.recipe).settings
        grid = {**grid, "config": {}, "modules": [recipe["modules"]] if recipe.get("modules") else grid["modules"]}
    base, given = config_from_args(ns, rule_option_names, defaults=grid["config"], modules=None)
    if record and ns.methods == QUICKSTART_GRID["methods"] and not ns.lr_grid:
        methods = record["methods"]
    elif ns.recipe and not record and ns.methods == QUICKSTART_GRID["methods"]:  # recipes: its own method
        methods = [base.method]
    else:
        methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods needs at least one method")
    if ns.lr_grid:
        lrs = "|".join(f"{lr:g}" for lr in ns.lr_grid)
        methods = [m if any(p.startswith("lr=") for p in m.split(":")[1:]) else f"{m}:lr={lrs}" for m in methods]
    timing = grid.get("timing") or {}
    rounds = ns.timing_rounds if ns.timing_rounds is not None else timing.get("rounds", 5)
    steps = ns.timing_steps if ns.timing_steps is not None else timing.get("steps", 3)
    if rounds < 0 or steps < 1:
        raise UserError("--timing-rounds must be >= 0 and --timing-steps >= 1")
    out = Path(ns.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-bench")
    run_bench(base, methods, ns.modules or grid["modules"], ns.seeds or grid["seeds"], out, rounds, steps,
              resume=bool(ns.resume))
    return 0


def cmd_bench_pipeline(ns: argparse.Namespace, rule_option_names: list[str]) -> int:
    from .distributed.throughput import bench_pipeline

    base, given = config_from_args(ns, rule_option_names, modules=None)
    methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
    if ns.splits and "split" in given:
        raise UserError("give the splits to compare with --splits only (--split is one of them)")
    if len(methods) != 1:
        raise UserError("bench-pipeline measures one method at a time: give one --methods name")
    if ns.processes < 2:
        raise UserError(f"--processes must be at least 2, got {ns.processes}")
    out = Path(ns.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-bench-pipeline")
    splits = ns.splits or ([base.split] if "split" in given else ["even", "balanced"])
    bench_pipeline(replace(base, method=methods[0]), ns.modules or [2, 4], ns.processes, out, splits)
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    from .recipes import RECIPES, describe, paper_number, recipe_names

    if getattr(ns, "what", None) == "recipes":
        print("recipes (locallearn train|bench --recipe NAME; flags given beside a recipe override it):")
        for name in recipe_names():
            recipe = RECIPES[name]
            print(f"  {name}\n      cell: {recipe.cell} ({paper_number(recipe)})\n      {describe(recipe)}")
        return 0
    from .data import dataset_choices
    from .heads import HEADS
    from .models import model_names
    from .rules import COUPLINGS, OBJECTIVES, RULES

    presets = [RULES.get(n) for n in RULES.names()]
    print("methods (presets: estimator x objective x coupling):")
    for p in presets:
        parts = f"{p.estimator} x {p.default_objective} x {p.default_coupling}"
        print(f"  {p.name:<17} {parts:<28} {p.summary}")
    def estimators(kind: str, name: str) -> str:
        return ", ".join(sorted({p.estimator for p in presets if name in getattr(p, kind)}))

    print("objectives (--objective; fwdgrad: --guess-head), [the estimators that take them]:")
    for n in OBJECTIVES.names():
        print(f"  {n:<13} {OBJECTIVES.get(n).summary} [{estimators('objectives', n)}]")
    print("couplings (--coupling), [the estimators that take them]:")
    for n in COUPLINGS.names():
        print(f"  {n:<13} {COUPLINGS.get(n).summary} [{estimators('couplings', n)}]")
    print("models:   " + ", ".join(model_names()))
    print("heads:    " + ", ".join(HEADS.names()))
    print("datasets: " + dataset_choices())
    print("recipes:  " + ", ".join(recipe_names()) + " (locallearn list recipes)")  # recipes
    return 0


def cmd_analyze(ns: argparse.Namespace) -> int:
    from .analyze import ANALYSES

    if not ns.analysis:
        raise UserError(f"name an analysis: locallearn analyze {{{','.join(ANALYSES.names())}}} ...")
    return ANALYSES.get(ns.analysis)().run(ns)


def _out_of_memory(error: RuntimeError) -> bool:
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower() or type(error).__name__ == "OutOfMemoryError"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage block), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    from . import __version__

    parser = OneLineErrorParser(prog="locallearn", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"locallearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,bench,bench-pipeline,list,analyze}")
    train_parser = sub.add_parser("train", help="train one model with one method; writes result.json, log.csv, "
                                                "checkpoints", description="Train one model with one learning rule.")
    add_run_arguments(train_parser, bench=False)
    bench_parser = sub.add_parser("bench", help="run methods x K side by side, print a table with ratios to bp, "
                                                "write bench.json and plots",
                                  description="Run a grid of methods x numbers of modules (x seeds) on the same "
                                              "data and seed; print a table with ratios to bp; write bench.json "
                                              "and PNG plots of accuracy against memory and of accuracy, memory "
                                              "and time against K. With no options it runs the quick start: a "
                                              "narrow 8-layer cnn1d (widths 16,16,32,32,64,64,64,64, linear heads, "
                                              "10 epochs) on mnist1d, bp against dgl, backlink and auglocal (d=2) "
                                              "at K=8, seeds 0,1,2; --model brings its own defaults instead.")
    add_run_arguments(bench_parser, bench=True, defaults=QUICKSTART_RUN)
    choose = bench_parser.add_argument_group("choosing settings and timing")
    choose.add_argument("--lr-grid", type=_float_list, metavar="LR,LR,...",
                        help="choose every method's lr among these on validation accuracy (needs --val-split); a "
                             "method spec with its own lr= keeps it")
    choose.add_argument("--timing-rounds", type=int,
                        help="rounds of interleaved timing after the runs: every configuration takes --timing-steps "
                             "steps per round on the same batches, in rotating order; the table's step time is each "
                             "configuration's fastest round (default: 5; 0: use each run's own median step)")
    choose.add_argument("--timing-steps", type=int, help="steps per configuration and round (default: 3)")
    stops = bench_parser.add_argument_group("stopping and resuming (each run writes train's files into OUT/runs/<id>/)")
    stops.add_argument("--resume", action="store_true", default=None,
                       help="continue the bench in --out that stopped (Ctrl-C, SIGTERM, kill -9, a time limit): runs "
                            "that finished are kept, not run again; the one that was stopped continues from its "
                            "checkpoint, the others run; then the timing is done again. Settings not given are "
                            "taken from OUT/bench.json; given flags must describe the same grid (only --threads, "
                            "--no-progress, --checkpoint-every, --data-dir, --download, --timing-rounds and "
                            "--timing-steps may change). The runs equal an uninterrupted bench's (bit for bit on "
                            "the CPU at the same --threads)")
    stops.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="also checkpoint every run every N steps, so that a kill loses at most N steps "
                            "(default: at the end of every epoch; Ctrl-C and SIGTERM save at once)")
    throughput = sub.add_parser("bench-pipeline", help="throughput of a torchrun pipeline vs one process with 1 "
                                                       "and with W threads",
                                description="Samples per second of pipelined training (W processes x 1 thread, "
                                            "async schedule, launched with torchrun) against one process with 1 "
                                            "thread and with W threads, for each K and split (even and balanced by "
                                            "default), with each stage's busy and blocked seconds; writes "
                                            "bench-pipeline.json.")
    add_run_arguments(throughput, bench=True)
    throughput.add_argument("--processes", type=int, default=2, help="pipeline processes W (default: 2)")
    throughput.add_argument("--splits", nargs="+", metavar="SPLIT",
                            help="the splits to compare, each K with each split back to back, e.g. --splits even "
                                 "balanced 7 (default: even balanced; or the one --split)")
    throughput.set_defaults(methods="dgl")
    lister = sub.add_parser("list", help="list methods, models, heads, datasets and recipes")
    lister.add_argument("what", nargs="?", choices=["recipes"],  # recipes: each with the table cell it targets
                        help="recipes: each paper recipe with the table cell it targets and its settings")
    from .analyze import ANALYSES

    analyze = sub.add_parser("analyze", help="diagnostics of runs and methods (see: locallearn analyze -h)",
                             description="Diagnostics shared by every method.")
    kinds = analyze.add_subparsers(dest="analysis", metavar="{" + ",".join(ANALYSES.names()) + "}")
    for name in ANALYSES.names():
        analysis = ANALYSES.get(name)
        analysis.add_arguments(kinds.add_parser(name, help=analysis.help, description=analysis.help))
    from .rules import SELECTORS

    return parser, sorted([*rule_option_fields(), *SELECTORS])


def main(argv: list[str] | None = None) -> int:
    parser, rule_option_names = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        if ns.command == "train":
            return cmd_train(ns, rule_option_names)
        if ns.command == "bench":
            return cmd_bench(ns, rule_option_names)
        if ns.command == "bench-pipeline":
            return cmd_bench_pipeline(ns, rule_option_names)
        if ns.command == "analyze":
            return cmd_analyze(ns)
        return cmd_list(ns)
    except NonFiniteLoss as error:
        print(f"locallearn: error: {error}", file=sys.stderr)
        return error.exit_code
    except Interrupted as error:
        print(f"locallearn: stopped: {error}", file=sys.stderr)
        return error.exit_code
    except UserError as error:
        print(f"locallearn: error: {error}", file=sys.stderr)
        return error.exit_code
    except (MemoryError, RuntimeError) as error:  # an allocation that no check foresaw: one line, not a traceback
        if not isinstance(error, MemoryError) and not _out_of_memory(error):
            raise
        print(f"locallearn: error: out of memory: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
              .rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("locallearn: interrupted", file=sys.stderr)
        return 130
