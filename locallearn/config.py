"""Everything that defines a training run; the command line fills it, the engine reads it."""
from __future__ import annotations

import ast
import math
import re
from dataclasses import asdict, dataclass, field, fields

from .errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "multistep", "constant")
PIPELINE_SCHEDULES = ("sync", "async")
DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("bf16", "fp16")

# Settings a resumed run may change. Where the run writes, how long it runs and how it logs; and the
# optimisation settings that do not change the shape of any saved state (after a non-finite loss the
# run resumes from its last good checkpoint with a lower --lr). Everything else must match.
RESUMABLE_CHANGES = ("epochs", "max_steps", "device", "threads", "progress", "eval_every", "checkpoint_every",
                     "measure", "data_dir", "download", "out", "resume", "channels_last", "compile", "tensorboard")
OPTIMISATION_CHANGES = ("lr", "momentum", "weight_decay", "sched", "warmup_epochs")
MAX_THREADS = 1024          # more threads than this is a typo (torch would try to start them all)
MAX_DIST_TIMEOUT = 10 ** 6  # seconds (11.6 days): longer is a typo, and a timedelta overflows at 1e308
SEED_RANGE = (-2 ** 63, 2 ** 63)  # what torch.manual_seed takes (a 64-bit integer)
FLOAT32_MAX = 3.4028234663852886e38  # the optimizers apply --lr and --weight-decay to float32 parameters


def parse_kwargs(items: list[str] | None, flag: str) -> dict:
    """`key=value` pairs; values are Python literals, `3x32x32` is a shape, anything else a string."""
    result = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"{flag} expects key=value pairs, got {item!r}")
        if re.fullmatch(r"\d+(x\d+)+", raw):
            value = tuple(int(v) for v in raw.split("x"))
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        result[key] = value
    return result


_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "dict": "a mapping of key=value settings", "list": "a list", "None": "null"}


def _has_type(value, kind: str) -> bool:
    if kind == "None":
        return value is None
    if kind in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict,
                              "list": list}[kind])


def check_type(flag: str, value, annotation: str) -> None:
    """One-line error unless `value` has the (string) type annotation, e.g. "int | None"."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    if not any(_has_type(value, kind) for kind in kinds):
        expected = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
        raise UserError(f"{flag} must be {expected}, got {value!r}")


@dataclass
class TrainConfig:
    method: str = "dgl"
    model: str = "mlp"
    dataset: str = "mnist1d"
    modules: int | None = None      # None: 1 for single-module rules (bp), else 4 (with --split even)
    split: str = "even"
    head: str = "conv"
    epochs: int = 20
    max_steps: int | None = None    # per phase (greedy has one phase per module)
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False          # SGD with Nesterov momentum (AugLocal's and InfoPro's scripts)
    weight_decay: float = 5e-4
    sched: str = "cosine"
    lr_milestones: list = field(default_factory=list)  # multistep: epochs after which the lr is x lr_decay
    lr_decay: float = 0.1
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None      # None: the CPU cores this process may use
    amp: str | None = None          # autocast to bf16 or fp16 (with a gradient scaler); None: full precision
    channels_last: bool = False     # NHWC memory layout for 2-d convolutions, on CUDA only (faster on GPUs)
    compile: str | None = None      # torch.compile backend for every layer and head (None: eager)
    augment: str | None = None      # None: the dataset's default
    crop_padding: int | None = None  # pixels of zero padding before a random crop (None: the size's default)
    val_split: float = 0.0          # fraction of every class held out of training for validation (0: none)
    data_dir: str = "data"
    download: bool = False
    model_kwargs: dict = field(default_factory=dict)
    head_kwargs: dict = field(default_factory=dict)
    dataset_kwargs: dict = field(default_factory=dict)
    rule_options: dict = field(default_factory=dict)
    out: str | None = None          # None: no files are written (bench and tests)
    resume: bool = False
    checkpoint_every: int = 0       # steps between mid-epoch checkpoints (0: at epoch ends only)
    eval_every: int = 1             # epochs between test evaluations (the final one always runs)
    measure: bool = True            # FLOPs and activation bytes at the first step of each phase
    progress: bool = True
    tensorboard: bool = False       # also write every log.csv column as TensorBoard scalars under OUT/tensorboard
    # one group of modules per process, launched with torchrun (distributed/pipeline.py)
    pipeline: bool = False
    schedule: str = "async"         # sync: lock-step, for checking; async: stages run ahead
    max_staleness: int = 2          # async: how many batches a stage may run ahead of the next one
    data_parallel: int = 1          # replicas per stage (world size = stages x data_parallel)
    dist_timeout: float = 45.0      # seconds before a silent peer is an error
    # the paper setup (recipes.py) the run started from, and each of its values a flag changed
    recipe: str | None = None
    recipe_overrides: dict = field(default_factory=dict)  # setting -> [recipe's value, the run's value]

    def validate(self) -> None:
        for f in fields(self):  # a config file or the Python API can give any JSON value
            check_type(f"--{f.name.replace('_', '-')}", getattr(self, f.name), f.type)
        for name in ("model_kwargs", "head_kwargs", "dataset_kwargs", "rule_options"):
            bad = [key for key in getattr(self, name) if not isinstance(key, str) or not key.isidentifier()]
            if bad:
                raise UserError(f"--{name.replace('_', '-')}: {bad[0]!r} is not a setting name")

        def positive(name: str, value, allow_none: bool = False):
            if value is None and allow_none:
                return
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {value}")

        positive("lr", self.lr)
        positive("batch_size", self.batch_size)
        positive("epochs", self.epochs)
        positive("max_steps", self.max_steps, allow_none=True)
        positive("modules", self.modules, allow_none=True)
        positive("eval_every", self.eval_every)
        positive("threads", self.threads, allow_none=True)
        if self.threads is not None and self.threads > MAX_THREADS:
            raise UserError(f"--threads must be at most {MAX_THREADS}, got {self.threads}")
        if not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise UserError(f"--seed must be a 64-bit integer (from -2**63 to 2**63 - 1), got {self.seed}")
        if not 0 <= self.val_split < 1:
            raise UserError(f"--val-split must be a fraction in [0, 1), got {self.val_split}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise UserError(f"--nesterov needs --optimizer sgd with --momentum above 0 (got --optimizer "
                            f"{self.optimizer}, --momentum {self.momentum})")
        for name in ("momentum", "weight_decay", "warmup_epochs", "checkpoint_every"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be zero or positive, got {value}")
        for name in ("lr", "weight_decay"):
            if getattr(self, name) > FLOAT32_MAX:
                raise UserError(f"--{name.replace('_', '-')} must be at most {FLOAT32_MAX:.3g} (float32's largest "
                                f"number, the parameters' type), got {getattr(self, name):g}")
        if self.warmup_epochs > self.epochs:
            raise UserError(f"--warmup-epochs {self.warmup_epochs:g} is longer than the run (--epochs {self.epochs})")
        positive("data_parallel", self.data_parallel)
        positive("dist_timeout", self.dist_timeout)
        if self.dist_timeout > MAX_DIST_TIMEOUT:
            raise UserError(f"--dist-timeout must be at most {MAX_DIST_TIMEOUT} seconds, got {self.dist_timeout:g}")
        if self.max_staleness < 0:
            raise UserError(f"--max-staleness must be zero or positive, got {self.max_staleness}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise UserError(f"unknown --amp {self.amp!r}; choose one of: {', '.join(AMP_DTYPES)}")
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS), ("sched", self.sched, SCHEDULES),
                                     ("device", self.device, DEVICES), ("schedule", self.schedule, PIPELINE_SCHEDULES)):
            if value not in choices:
                raise UserError(f"unknown --{name} {value!r}; choose one of: {', '.join(choices)}")
        self._validate_schedule()
        if self.crop_padding is not None and self.crop_padding < 0:
            raise UserError(f"--crop-padding must be zero or positive, got {self.crop_padding}")
        if self.compile is not None:
            _check_compile_backend(self.compile)
        if self.resume and not self.out:
            raise UserError("--resume needs --out DIR, the directory of the run to continue")
        if self.tensorboard and not self.out:
            raise UserError("--tensorboard writes under --out DIR/tensorboard: give --out")

    def _validate_schedule(self) -> None:
        milestones = self.lr_milestones
        if any(isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0
               for m in milestones) or list(milestones) != sorted(milestones):
            raise UserError(f"--lr-milestones must be increasing positive epochs, e.g. 100,150,175, got {milestones}")
        if self.sched == "multistep" and not milestones:
            raise UserError("--sched multistep needs --lr-milestones EPOCHS, e.g. --lr-milestones 100,150,175")
        if milestones and self.sched != "multistep":
            raise UserError(f"--lr-milestones applies to --sched multistep, not --sched {self.sched}")
        if not math.isfinite(self.lr_decay) or not 0 < self.lr_decay <= 1:
            raise UserError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_compile_backend(name: str) -> None:
    """--compile BACKEND must name a backend torch.compile knows (checked now, not at the first step)."""
    try:
        from torch._dynamo.backends.registry import list_backends, lookup_backend
    except ImportError:  # a torch without dynamo: torch.compile itself will say so
        return
    try:
        lookup_backend(name)
    except Exception:  # InvalidBackend
        raise UserError(f"unknown --compile backend {name!r}; choose one of: "
                        f"{', '.join(sorted(list_backends()))}") from None
