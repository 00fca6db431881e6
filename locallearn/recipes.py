"""Recipes: a seed paper's whole training setup for one cell of one of its tables, in one flag.

    locallearn list recipes                              # each recipe and the table cell it targets
    locallearn train --recipe auglocal-cifar10-resnet32 --out runs/auglocal
    locallearn train --recipe sgr-cifar10-resnet32 --epochs 20     # a flag beside it overrides it

A recipe is a set of TrainConfig settings (optimizer, lr, batch size, epochs, schedule, weight decay,
momentum/Nesterov, augmentation, model, split or K, head and the method's own options). They sit
beneath every flag and every --config setting: whatever is given explicitly wins, per key inside
the kwargs and rule options, and the run records the recipe's name (`recipe`) and each value a
flag changed, `recipe_overrides = {setting: [recipe's value, the run's value]}`, in config.json,
result.json and bench.json. A recipe's model_kwargs / head_kwargs / dataset_kwargs / rule_options
are dropped when the model / head / dataset / method they belong to is replaced.

Values are ported from the authors' published scripts where there are any (file and line in the
comment beside each value; the repositories are github.com/ChenxiangMA/AugLocal,
blackfeather-wang/InfoPro-Pytorch, eugenium/DGL, streethagore/ForwardLocalGradient,
anokland/local-loss), otherwise from the paper (section named). `notes` say where locallearn
does something else than the authors or lacks what they use, and which values the paper leaves
open. None of the seed authors scales the lr with the batch size: a --batch-size override keeps the
recipe's lr (give --lr too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields

from .errors import UserError


@dataclass(frozen=True)
class Recipe:
    name: str
    settings: dict               # TrainConfig fields
    cell: str                    # the table cell it targets
    paper_top1: float | None     # the paper's test top-1 % for that cell (None: not in the project's papers)
    source: str                  # where the values come from
    notes: tuple = ()            # deviations: what locallearn does differently or lacks; values the paper leaves open
    paper_std: float | None = None


RECIPES: dict[str, Recipe] = {}


def _register(recipe: Recipe) -> None:
    from .config import TrainConfig

    unknown = set(recipe.settings) - {f.name for f in fields(TrainConfig)}
    if unknown or recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name}: unknown settings {sorted(unknown)} or registered twice")
    RECIPES[recipe.name] = recipe


# --- AugLocal (Ma et al., ICLR 2024) and its re-implemented baselines -------------------------------
# Training setup of every CIFAR-10 run of github.com/ChenxiangMA/AugLocal (train.py, run.sh, README.md);
# the paper's appendix A.2 states the same ("SGD, Nesterov momentum 0.9, L2 weight decay 1e-4, batch
# 1024 on CIFAR-10, 400 epochs, initial lr 0.8, cosine annealing").
_AUGLOCAL_TRAINING = {
    "dataset": "cifar10",
    "optimizer": "sgd",          # train.py:208 torch.optim.SGD(model.parameters(), ...)
    "lr": 0.8,                   # train.py:60 --lr default 0.8 (train.py:98: used on cifar10/svhn)
    "momentum": 0.9,             # train.py:101 'momentum': 0.9
    "nesterov": True,            # train.py:102 'nesterov': True
    "weight_decay": 1e-4,        # train.py:61 --wd default 1e-4 (run.sh passes none)
    "batch_size": 1024,          # run.sh:2-26 --batch_size 1024 (train.py:97: on cifar10/svhn)
    "epochs": 400,               # run.sh:2-26 --epochs 400
    "sched": "cosine",           # run.sh:2-26 --cos_lr; train.py:429-438 adjust_learning_rate
    "warmup_epochs": 10.0,       # train.py:431-435: the first 10 epochs ramp up from 0.01
    "augment": "crop-flip",      # train.py:129-136 pad 4, RandomCrop(32), RandomHorizontalFlip
    "crop_padding": 4,           # train.py:131-132 F.pad(..., (4, 4, 4, 4), mode='reflect')
}
_AUGLOCAL_NOTES = (
    "warm-up: the authors set the lr once per epoch, lr(e) = cos(e) (e-1)/10 + 0.01 (11-e)/10 for epochs "
    "e <= 10 with the cosine over all 400 epochs (train.py:429-438); locallearn ramps linearly from 0 per "
    "step over 10 epochs, then runs the cosine over the remaining 390 (no such blend is available)",
    "augmentation: the authors pad with reflection (train.py:131-132); locallearn's random crop pads with "
    "zeros (no reflect padding available)",
    "the authors' lr 0.8 is for batch 1024; they use 0.1 at batch 128 on STL-10 (train.py:97-98) but state "
    "no scaling rule: a --batch-size override keeps lr 0.8",
)

_register(Recipe(
    name="auglocal-cifar10-resnet32",
    cell="AugLocal Table 1: ResNet-32 on CIFAR-10, 16 local layers, AugLocal d = 3",
    paper_top1=92.26, paper_std=0.20,
    source="github.com/ChenxiangMA/AugLocal README.md:19 (the ResNet-32 command), train.py, run.sh; paper A.2",
    settings={
        **_AUGLOCAL_TRAINING,
        "method": "auglocal",
        "model": "resnet32",     # README.md:19 --model resnet --layers 32
        "split": "layer",        # README.md:19 --local_module_num 16: one module per layer (stem + 15 blocks)
        "rule_options": {
            "aux_depth": 3,      # README.md:19 --aux_net_depth 2 copies = the paper's d = 3 (classifier included)
            "pyramid_decay": 0.5,  # README.md:19 --pyramid --pyramid_coeff 0.5
            "min_depth": 2,      # networks/resnet.py:136 max(1, ...) copied layers (locallearn's unit: 1 copy = 2)
            "aux_layout": "authors",  # train.py:84 local_module_num = 16 - aux_net_depth
            "aux_selection": "uniform",  # train.py:83 aux_net_config = 'unifSamp'
        },
    },
    notes=_AUGLOCAL_NOTES,
))

_register(Recipe(
    name="auglocal-cifar10-resnet110",
    cell="AugLocal Table 1: ResNet-110 on CIFAR-10, 55 local layers, AugLocal d = 4",
    paper_top1=93.22, paper_std=0.17,
    source="github.com/ChenxiangMA/AugLocal README.md:25 (the ResNet-110 command), train.py, run.sh; paper A.2",
    settings={
        **_AUGLOCAL_TRAINING,
        "method": "auglocal",
        "model": "resnet110",    # README.md:25 --model resnet --layers 110
        "split": "layer",        # README.md:25 --local_module_num 55: one module per layer
        "rule_options": {
            "aux_depth": 4,      # README.md:25 --aux_net_depth 3 copied layers = the paper's d = 4
            "pyramid_decay": 0.5,  # README.md:25 --pyramid --pyramid_coeff 0.5
            "min_depth": 2,      # networks/resnet.py:136
            "aux_layout": "authors",  # train.py:84
            "aux_selection": "uniform",  # train.py:83
        },
    },
    notes=_AUGLOCAL_NOTES,
))

_register(Recipe(
    name="infopro-cifar10-resnet32",
    cell="AugLocal Table 1: ResNet-32 on CIFAR-10, 16 local layers, InfoPro (AugLocal's re-implementation)",
    paper_top1=87.26, paper_std=0.16,
    source="github.com/ChenxiangMA/AugLocal run.sh:12 (InfoPro, ResNet-32), train.py; the weights are also "
           "InfoPro's own comand.sh:10 (github.com/blackfeather-wang/InfoPro-Pytorch, ResNet-32 K = 16)",
    settings={
        **_AUGLOCAL_TRAINING,
        "method": "infopro",
        "model": "resnet32",     # run.sh:12 --model resnet --layers 32
        "split": "layer",        # run.sh:12 --local_module_num 16 (docs/methods/infopro_predsim.md: --split layer)
        "rule_options": {
            "recon_weight_first": 5.0,   # run.sh:12 --ixx_1 5
            "ce_weight_first": 0.05,     # run.sh:12 --ixy_1 0.05
            "recon_weight_last": 0.2,    # run.sh:12 --ixx_2 0.2
            "ce_weight_last": 0.5,       # run.sh:12 --ixy_2 0.5
            "infopro_hidden": 128,       # run.sh:12 --aux_net_feature_dim 128; auxiliary_nets.py:186 FC(.., 128)
        },
    },
    notes=_AUGLOCAL_NOTES + (
        "InfoPro's own runs (comand.sh) use its contrastive loss, 160 epochs and a step schedule; this recipe "
        "is AugLocal's cross-entropy re-implementation, the setting of AugLocal's Table 1 (the contrastive "
        "loss is not in locallearn)",
    ),
))

_register(Recipe(
    name="dgl-cifar10-resnet32",
    cell="AugLocal Table 1: ResNet-32 on CIFAR-10, 16 local layers, DGL (AugLocal's re-implementation)",
    paper_top1=86.30, paper_std=0.12,
    source="github.com/ChenxiangMA/AugLocal run.sh:16 (DGL, ResNet-32), train.py:85-86, "
           "networks/auxiliary_nets.py:99 (the DGL auxiliary net)",
    settings={
        **_AUGLOCAL_TRAINING,
        "method": "dgl",
        "model": "resnet32",     # run.sh:16 --model resnet --layers 32
        "split": "layer",        # run.sh:16 --local_module_num 16
        "head": "dgl",           # train.py:86 aux_net_config = 'DGL' (DGL's MLP-SR auxiliary net)
        "head_kwargs": {"mlp_depth": 2},  # networks/auxiliary_nets.py:99-: 2 hidden FC layers (infopro_predsim.md)
    },
    notes=_AUGLOCAL_NOTES + (
        "AugLocal's DGL net has no FC biases and pools maps of at most 4 positions per side to 1 (locallearn's "
        "dgl head: biases, pooled to 2); see docs/methods/infopro_predsim.md",
    ),
))

# --- SGR (Yang et al., ICML 2024): no code published; appendix E of the paper ---------------------
_register(Recipe(
    name="sgr-cifar10-resnet32",
    cell="SGR Table 6 (also Table 3): ResNet-32 on CIFAR-10, K = 16 (every block and the stem a module), SGR",
    paper_top1=85.65, paper_std=0.38,
    source="the SGR paper (/work/shared/papers/sgr-successive-gradient-reconciliation.txt), appendix E "
           "'On CIFAR' and 'Local classifier setups'; no code is published",
    settings={
        "method": "sgr",
        "model": "resnet32",     # Table 6: ResNet-32
        "dataset": "cifar10",
        "split": "layer",        # appendix E: 'when K=16, each residual block and the initial stem layer is a
                                 # local module'
        "head": "conv",          # appendix E: Belilovsky et al. 2019's classifier (k = 2): a conv and a linear layer
        "optimizer": "sgd",      # appendix E: 'adopt the SGD optimizer with a momentum of 0.9'
        "momentum": 0.9,         # appendix E
        "nesterov": False,       # appendix E: plain momentum (no Nesterov named)
        "weight_decay": 5e-4,    # appendix E: 'a weight decay of 5e-4'
        "lr": 0.1,               # appendix E: 'an initial learning of 0.1'
        "batch_size": 128,       # appendix E: 'a batchsize of 128'
        "epochs": 200,           # appendix E: 'train all models for 200 epochs'
        "sched": "cosine",       # appendix E: 'a cosine annealing learning rate scheduler'
        "warmup_epochs": 0.0,    # appendix E: no warm-up named on CIFAR
        "augment": "crop-flip",  # appendix E: 'standard data pre-processing and augmentations'
        "crop_padding": 4,       # the standard CIFAR crop (pad 4); the paper names no value
        "rule_options": {
            "sgr_lambda": 1.0,   # appendix E: 'The coefficient of our SGR loss lambda is set as 1 as default'
            "sgr_norm": "l2",    # Algorithm 1 (appendix F): per-sample L2 normalisation
            "sgr_reduction": "mean",  # Algorithm 1: nn.MSELoss (NOTES.md)
        },
    },
    notes=("'standard augmentations' are not spelled out; locallearn's CIFAR standard is used (zero-pad 4, "
           "random crop, horizontal flip)",),
))

# --- BackLink (Guo, Eltawil, Fouda, Salama): no code published; the paper's section 3.1 -------------
_register(Recipe(
    name="backlink-cifar10-resnet110",
    cell="BackLink Table 1 (linear local classifiers): ResNet-110 on CIFAR-10, K = 16, l = 3 (error 15.62 %)",
    paper_top1=84.38,
    source="the BackLink paper (/work/shared/papers/backlink-backward-links.txt), section 3.1 'Experiment "
           "setup' and 3.2; no code is published",
    settings={
        "method": "backlink",
        "model": "resnet110",    # Table 1: ResNet110
        "dataset": "cifar10",
        "split": "even",         # 3.1: 'we divide the network evenly ... one more layer to lower modules' (7x4 + 9x3)
        "modules": 16,           # Table 1: K = 16
        "head": "linear",        # 3.2 / Table 1: 'a simple fully-connected (FC) layer' as local classifier
        "optimizer": "sgd",      # 3.1: 'Stochastic gradient descent (SGD) is used as the optimizer'
        "momentum": 0.9,         # 3.1: 'The momentum is set to 0.9'
        "nesterov": False,       # 3.1: plain momentum
        "weight_decay": 5e-4,    # 3.1: 'weight decay ... 0.0005 for ResNets'
        "lr": 0.3,               # 3.2: 'Learning rates are optimized ... 0.3 in ResNet110'
        "batch_size": 512,       # 3.1: 'The batch size is set to 512 in all the experiments'
        "epochs": 200,           # 3.1: '200 epochs in ResNets'
        "sched": "cosine",       # NOT IN THE PAPER ('schedules are optimized in each network'): locallearn's default
        "augment": "crop-flip",  # NOT IN THE PAPER: the standard CIFAR augmentation
        "crop_padding": 4,
        "rule_options": {
            "link_length": 3,    # Table 1: the l = 3 row
            "link_alpha": 0.25,  # NOT IN THE PAPER ('selected from {0, 0.25, 0.5, 0.75, 1}'): locallearn's default
        },
    },
    notes=("the paper leaves the lr schedule, the augmentation and alpha per cell open ('optimized in each "
           "network'): cosine, crop-flip and alpha = 0.25 are locallearn's defaults, not the authors'",),
))

# --- Forward gradient with local guesses (Fournier et al., ICML 2023) -------------------------------
_register(Recipe(
    name="fwdgrad-fashion-mnist-resnet18",
    cell="Forward-gradient Table 7: Fashion-MNIST, ResNet-18 in 8 blocks, global target, local CNN guess, "
         "weight perturbation",
    paper_top1=93.6, paper_std=0.2,
    source="github.com/streethagore/ForwardLocalGradient README.md:18,23,32 (the command), args.py, "
           "scheduler.py, trainer/forward_gradient.py; paper section 4.1 and appendix A",
    settings={
        "method": "fwdgrad",
        "model": "resnet18",     # README.md:21 resnet18 (8 blocks: args.py:34 'resnet18-8b')
        "model_kwargs": {"stem": "cifar"},  # appendix A: 3x3 stride-1 stem, no max-pool (model/resnet.py:175-180)
        "dataset": "fashion-mnist",
        "split": "even",         # model/resnet.py:141-200: block 0 = stem + first BasicBlock, then one block each
        "modules": 8,            # README.md:21 8 blocks
        "head": "fg-cnn",        # README.md:32 --auxnet cnn
        "head_kwargs": {"width": 32, "depth": 4},  # README.md:23 h_channel 32 for 8 blocks; args.py:62 n_layers 3
                                 # strided convs after the 1x1 compression (model/auxnet.py:103-117): depth 1 + 3
        "optimizer": "sgd",      # args.py:118 default optimizer 'sgd'; optimizer.py:10
        "lr": 0.05,              # README.md:18 --optimizer.lr 5e-2
        "momentum": 0.9,         # args.py:104
        "nesterov": False,       # optimizer.py:10 torch.optim.SGD(lr, weight_decay, momentum)
        "weight_decay": 5e-4,    # README.md:18 --optimizer.wd 5e-4
        "batch_size": 128,       # args.py:101 batchsize 128
        "epochs": 100,           # README.md:18 --n_epoch 100
        "sched": "multistep",    # args.py:158 default 'steplr'; scheduler.py StepLR, stepped per epoch
        "lr_milestones": [30, 60, 90],  # args.py:137 step_size 30 (over 100 epochs)
        "lr_decay": 0.2,         # args.py:138 gamma 0.2
        "augment": "none",       # appendix A: 'Fashion-MNIST do not use any data augmentation'; dataset/utils.py:85
        "rule_options": {
            "target": "global",  # Table 7: global target (README.md:27 'fg-tgt-e2e-...')
            "guess": "local",    # Table 7: local guess
            "space": "weight",   # Table 7 'Weight' column (README.md:27 '...-weight')
            "projection_granularity": "sample-tensor",  # trainer/estimators.py: per sample and tensor (NOTES.md)
            "fwd_mode": "emulate",  # appendix A.3: two backward passes, as the authors' code
        },
    },
    notes=(
        "locallearn's fg-cnn head differs from the authors' AuxiliaryCNN (model/auxnet.py:103-127): it has no "
        "BatchNorm, biases in its convs and a global average pool before the linear layer (theirs: BN after "
        "every conv, bias-free 3x3 convs, pool to 2x2)",
        "the authors' last block classifies with BN + global pool + linear (model/resnet.py:148-150); "
        "locallearn's ResNet-18 classifier has no BN",
        "the authors' init is kaiming-uniform (args.py:38); locallearn's resnet18 uses He-normal (fan-out)",
        "the paper's Fashion-MNIST lr is lost in the text extraction; README.md:18's 5e-2 is used",
    ),
))

# --- local-loss (Nøkland & Eidnes, ICML 2019): github.com/anokland/local-loss -----------------------
# The settings of benchmarks/local_loss.sh (issue 21), each from run_experiments.sh:15-18 and the
# defaults of train.py; one recipe per column of the README's Fashion-MNIST table (README.md:31).
_LOCAL_LOSS_TRAINING = {
    "model": "mlp",
    "dataset": "fashion-mnist",  # run_experiments.sh:15-18 --dataset FashionMNIST
    "optimizer": "adam",         # train.py:41 --optim default 'adam'
    "lr": 5e-4,                  # run_experiments.sh:15-18 --lr 5e-4
    "momentum": 0.0,             # train.py:43 --momentum default 0.0 (unused by Adam)
    "nesterov": False,
    "weight_decay": 0.0,         # train.py:45 --weight-decay default 0.0
    "batch_size": 128,           # train.py:19 --batch-size default 128
    "epochs": 200,               # run_experiments.sh:15-18 --epochs 200
    "sched": "multistep",        # train.py:1621 lr * lr_decay_fact ** bisect_right(milestones, epoch - 1)
    "lr_milestones": [100, 150, 175, 188],  # run_experiments.sh:15-18 --lr-decay-milestones 100 150 175 188
    "lr_decay": 0.25,            # train.py:39 --lr-decay-fact default 0.25
    "augment": "crop-flip",      # train.py:236-237 RandomCrop(28, padding=2), RandomHorizontalFlip
    "crop_padding": 2,           # train.py:236 padding=2
}


def _local_loss_mlp(activation: str) -> dict:
    return {"depth": 3,          # run_experiments.sh:15-18 --num-layers 3
            "width": 1024,       # train.py:23 --num-hidden default 1024
            "bias": True,        # train.py:490 nn.Linear(num_in, num_out, bias=True), BN before each nonlinearity
            "dropout": 0.025,    # run_experiments.sh:15-18 --dropout 0.025
            "output_layer": True,  # train.py Net: the output layer on the detached last hidden layer
            "activation": activation}  # run_experiments.sh:17-18 --nonlin leakyrelu (sim, predsim); else relu


def _local_loss(column: str, error: float, line: int, method: str, beta: float | None, activation: str) -> Recipe:
    settings = {**_LOCAL_LOSS_TRAINING, "method": method, "model_kwargs": _local_loss_mlp(activation)}
    if method == "bp":
        settings.update(split="even", modules=1)  # run_experiments.sh:15 --backprop: one global loss
    else:
        settings.update(split="layer")  # one module per hidden layer + the output layer (docs/fashion_mnist.md)
        settings["rule_options"] = {"predsim_beta": beta, "predsim_zero_output": True}  # Net.__init__ zeroes layer_out  # train.py:49 --beta; --loss-sup pred = 0, sim = 1
    return Recipe(
        name=f"local-loss-fashion-mnist-mlp-{column}",
        cell=f"local-loss README Fashion-MNIST table: mlp 3 x 1024 (2.9M), "
             f"{'global loss' if method == 'bp' else repr(column)} (test error {error:.2f} %)",
        paper_top1=round(100 - error, 2),
        source=f"github.com/anokland/local-loss run_experiments.sh:{line}, train.py defaults, README.md:31; "
               "the same settings as benchmarks/local_loss.sh",
        settings=settings,
        notes=("the authors scale their output layer's loss by 1 - beta under Adam, where a constant factor "
               "changes nothing; locallearn trains it on the plain cross-entropy (--predsim-scale-last gives "
               "theirs)",) if method != "bp" else (),
    )


_register(_local_loss("predsim", 8.54, 18, "predsim", 0.99, "leakyrelu"))  # train.py:49 beta default 0.99
_register(_local_loss("pred", 8.60, 16, "predsim", 0.0, "relu"))           # run_experiments.sh:16 --loss-sup pred
_register(_local_loss("sim", 9.70, 17, "predsim", 1.0, "leakyrelu"))       # run_experiments.sh:17 --loss-sup sim
_register(_local_loss("bp", 8.37, 15, "bp", None, "relu"))                 # run_experiments.sh:15 --backprop

# --- DGL (Belilovsky, Eickenberg, Oyallon, ICML 2020): github.com/eugenium/DGL -----------------------
_register(Recipe(
    name="dgl-cifar10-cnn",
    cell="DGL section 5 (auxiliary-network study): the 6-layer CIFAR-10 CNN trained layer-wise (K = 6) "
         "with MLP-SR-aux",
    paper_top1=None,
    source="github.com/eugenium/DGL auxiliary_nets_study/cifar_dgl.py and models.py",
    settings={
        "method": "dgl",
        "model": "cnn1d",        # the plain conv-BN-ReLU stack (runs on images too), sized as models.py:23-64
        "model_kwargs": {"widths": (128, 256, 256, 512, 512, 512),  # models.py:24 feature_size=128, depth=6,
                                                                   # doubled at downsample=[1, 3] (models.py:35,51-59)
                         "strides": (1, 2, 1, 2, 1, 1)},           # models.py:53-55 halve the map at layers 1 and 3
        "dataset": "cifar10",
        "split": "layer",        # cifar_dgl.py:70 --block_size default 1: one module per layer
        "head": "dgl",           # cifar_dgl.py:69 --type_aux default 'mlp-sr'; models.py:29-30 n_lin=3, mlp_layers=3
        "head_kwargs": {"convs": 3, "mlp_depth": 3},
        "optimizer": "sgd",      # cifar_dgl.py:127 optim.SGD(..., momentum=0.9, weight_decay=5e-4)
        "lr": 0.1,               # cifar_dgl.py:123,145 layer_lr 0.1
        "momentum": 0.9,         # cifar_dgl.py:127
        "nesterov": False,       # cifar_dgl.py:127
        "weight_decay": 5e-4,    # cifar_dgl.py:128
        "batch_size": 128,       # cifar_dgl.py:61 --batch-size default 128
        "epochs": 50,            # cifar_dgl.py:65 --epochs default 50
        "sched": "multistep",    # cifar_dgl.py:55-56 lr_0 * 0.2 ** (epoch // 15), 0-based epochs
        "lr_milestones": [15, 30, 45],
        "lr_decay": 0.2,         # cifar_dgl.py:56
        "augment": "crop-flip",  # cifar_dgl.py:96-97 RandomCrop(32, padding=4), RandomHorizontalFlip
        "crop_padding": 4,       # cifar_dgl.py:96
    },
    notes=(
        "the authors down-sample with a 2x2 max-pool before the conv (models.py:53-55); locallearn's cnn "
        "model has no such layer and uses a stride-2 conv instead",
        "the authors' last layer classifies with their aux net (pool to 2x2, 2 hidden FC + BN + ReLU, "
        "models.py:73-75); locallearn's last module uses the model's classifier (global pool + linear)",
        "the authors keep PyTorch's default init (the DGL CIFAR code); locallearn's models use He init",
        "the paper's number for this cell is not in /work/shared/papers",
    ),
))


# --- lookup and application ----------------------------------------------------------------------

def recipe_names() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(recipe_names())}")
    return RECIPES[name]


# a recipe's kwargs belong to its model / head / dataset / method: another one drops them
_BELONGS_TO = {"model_kwargs": "model", "head_kwargs": "head", "dataset_kwargs": "dataset", "rule_options": "method"}


def _normal(value):
    """JSON's view of a value (a tuple is a list, 100 equals 100.0), to compare a config file's settings."""
    return json.loads(json.dumps(value, sort_keys=True), parse_int=float)


def apply_recipe(name: str, settings: dict) -> dict:
    """`settings` (the flags and --config settings given) over recipe `name`'s: per key inside the
    kwargs and rule options. The result records the recipe and, in `recipe_overrides`, each recipe
    value that `settings` change, as [recipe's value, the run's value]."""
    recipe = {**{key: {} for key in _BELONGS_TO}, **get_recipe(name).settings}  # no kwargs: the defaults, {}
    merged, overrides = dict(settings), {}
    for key, value in recipe.items():
        owner = _BELONGS_TO.get(key)
        replaced_owner = owner is not None and owner in settings and settings[owner] != recipe.get(owner)
        if key not in settings:
            if replaced_owner:  # e.g. --model resnet20 beside a recipe of the mlp: its model_kwargs do not fit
                if value:
                    overrides[key] = [value, None]
            else:
                merged[key] = value
        elif isinstance(value, dict) and isinstance(settings[key], dict) and not replaced_owner:
            merged[key] = {**value, **settings[key]}
            overrides.update({f"{key}.{k}": [value.get(k), v] for k, v in settings[key].items()
                              if _normal(value.get(k)) != _normal(v)})
        elif _normal(settings[key]) != _normal(value):
            overrides[key] = [value, settings[key]]
    merged["recipe"], merged["recipe_overrides"] = name, overrides
    return merged


def describe(recipe: Recipe) -> str:
    """One line of the settings, for `locallearn list recipes`."""
    s = recipe.settings
    cut = f"K={s['modules']}" if s.get("split") == "even" else f"--split {s.get('split')}"
    opt = s["optimizer"] + ("+nesterov" if s.get("nesterov") else "")
    sched = s["sched"] + (f" {','.join(map(str, s['lr_milestones']))} x{s['lr_decay']}" if s["sched"] == "multistep"
                          else "") + (f", warm-up {s['warmup_epochs']:g} epochs" if s.get("warmup_epochs") else "")
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in s.get("rule_options", {}).items())
    return (f"{s['method']} {s['model']} {s['dataset']} {cut}; {opt} lr {s['lr']:g} wd {s['weight_decay']:g}, "
            f"batch {s['batch_size']}, {s['epochs']} epochs {sched}; augment {s.get('augment')}"
            + (f"; {options}" if options else ""))


def paper_number(recipe: Recipe) -> str:
    if recipe.paper_top1 is None:
        return "paper: not in the project's papers"
    std = "" if recipe.paper_std is None else f" +- {recipe.paper_std:.2f}"
    return f"paper: {recipe.paper_top1:.2f}{std} % top-1"


__all__ = ["RECIPES", "Recipe", "apply_recipe", "get_recipe", "recipe_names"]
