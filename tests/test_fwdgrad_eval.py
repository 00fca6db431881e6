"""Evaluation after fwdgrad training (issue 28): a network trained with a forward-gradient estimator
must evaluate (BatchNorm with its running statistics) about as well as it trains (batch statistics).

The estimators move the weights fast in directions that a train-mode BatchNorm does not see (the
shift and scale of a channel's batch statistics), so PyTorch's running average of the batch
statistics lags the weights and evaluation can fall to chance while training accuracy rises.
`--bn-stats follow` (the default) carries the running statistics along with every step
(`module_state.follow_running_statistics`); the updates themselves are untouched. Also: the
one-line warning for a run whose train-mode accuracy is far above its test accuracy early on."""
import pytest
import torch

from helpers import tiny_config
from locallearn import Trainer
from locallearn.errors import UserError
from locallearn.evaluation import EARLY_EPOCHS, SUSPICIOUS_GAP, evaluate, evaluation_warning
from locallearn.module_state import frozen_batchnorm_statistics

BN = torch.nn.modules.batchnorm._BatchNorm

# A deep BN network (ResNet-20: stem + 9 blocks, 21 BNs) in 8 modules, on 10 classes of 1x8x8 synthetic
# images, 48 steps at a constant lr 0.05: the state of a run in the middle of training, where the running
# statistics must keep up with the weights. With PyTorch's running average (--bn-stats ema) the default
# estimator evaluates at chance here (train-mode 64 %, eval-mode 10 %).
STRESS = dict(model="resnet20", model_kwargs={"width": 8}, modules=8, head="conv", epochs=3, batch_size=32, lr=0.05,
              sched="constant", dataset_kwargs={"shape": (1, 8, 8), "classes": 10, "train": 512, "test": 64})

ESTIMATORS = [
    dict(),  # the authors' estimator: weight space, per sample x tensor, local guess, emulated
    dict(guess="gaussian"),
    dict(guess="rademacher"),
    dict(space="activity"),
    dict(space="activity", guess="gaussian"),
    dict(fwd_mode="jvp", projection_granularity="block"),  # genuine forward mode, one sweep
    dict(fwd_mode="jvp", space="activity", bn_jvp="single"),
]


def trained(options, **settings):
    trainer = Trainer(tiny_config(method="fwdgrad", rule_options=options, measure=False, **{**STRESS, **settings}))
    trainer.fit()
    return trainer


def train_and_eval_top1(trainer) -> tuple[float, float]:
    """Top-1 % of the network on the training batches, BN normalising with each batch's statistics
    (as in training; no running statistics touched) and in eval mode (running statistics)."""
    net = trainer.net
    batches = list(trainer.data.train_batches(trainer.cfg.batch_size, 0, "none", torch.Generator()))
    hits = count = 0
    with torch.no_grad(), frozen_batchnorm_statistics(net.model):
        for x, y in batches:
            h = x
            for module in net:
                h = module.body(h)
            hits += int((net[-1].head(h).argmax(1) == y).sum())
            count += len(y)
    return 100.0 * hits / count, evaluate(net, trainer.rule, batches)["top1"]


@pytest.mark.parametrize("options", ESTIMATORS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_a_trained_network_evaluates_as_it_trains(options):
    train_mode, eval_mode = train_and_eval_top1(trained(options))
    assert train_mode > 30, "the network learned something"
    # population statistics are less noisy than those of a batch of 32: evaluation may be a little better
    assert train_mode - 5 <= eval_mode <= train_mode + 10, (train_mode, eval_mode)


def test_the_running_average_of_pytorch_lags_here():
    """What the test above guards against: with --bn-stats ema the same run evaluates at chance."""
    train_mode, eval_mode = train_and_eval_top1(trained({"bn_stats": "ema"}))
    assert train_mode > 50 and eval_mode < 25, (train_mode, eval_mode)


# ------------------------------------------------------------------ what --bn-stats follow does
SMALL = dict(model="resnet20", model_kwargs={"width": 4, "depth": 8}, modules=3, head="conv", batch_size=16,
             dataset_kwargs={"shape": (3, 8, 8), "classes": 4, "train": 64, "test": 16})


def small_trainer(**options):
    return Trainer(tiny_config(method="fwdgrad", rule_options=options, measure=False, **SMALL))


def batches_of(trainer, n):
    return list(trainer.data.train_batches(16, 0, "none", torch.Generator()))[:n]


def step(trainer, x, y):
    trainer.train_step(x, y, list(range(len(trainer.net))))


def batch_statistics(trainer, x) -> dict:
    """Every BN's batch mean and unbiased variance (what PyTorch counts into its running variance)
    when the network, as it is, runs what evaluation runs on `x`."""
    found = {}

    def hook(module, args, output):
        z = args[0].detach()
        dims = [0] + list(range(2, z.dim()))
        found[module] = (z.mean(dims), z.var(dims, unbiased=True))

    bns = [m for m in trainer.net.modules() if isinstance(m, BN)]
    handles = [m.register_forward_hook(hook) for m in bns]
    with torch.no_grad(), frozen_batchnorm_statistics(trainer.net):
        trainer.rule._evaluation_forward(trainer.net, x)
    for handle in handles:
        handle.remove()
    return found


@pytest.mark.parametrize("options", [dict(), dict(guess="gaussian", space="activity")])
def test_following_changes_no_update_only_the_running_statistics(options):
    """The same parameters after the same steps (random guesses included: the extra forward pass
    draws nothing from the RNG), and other running statistics."""
    runs = {}
    for stats in ("ema", "follow"):
        trainer = small_trainer(bn_stats=stats, **options)
        torch.manual_seed(0)
        for x, y in batches_of(trainer, 3):
            step(trainer, x, y)
        runs[stats] = trainer.net
    for (name, a), b in zip(runs["ema"].named_parameters(), runs["follow"].parameters()):
        assert torch.equal(a, b), name
    buffers = [(name, a, b) for (name, a), b in zip(runs["ema"].named_buffers(), runs["follow"].buffers())]
    assert all(torch.equal(a, b) for name, a, b in buffers if name.endswith("num_batches_tracked"))
    assert any(not torch.allclose(a, b) for name, a, b in buffers if name.endswith("running_var"))


def test_after_one_step_the_running_statistics_are_those_of_the_stepped_network():
    trainer = small_trainer()
    (x, y), = batches_of(trainer, 1)
    step(trainer, x, y)
    found = batch_statistics(trainer, x)
    assert len(found) > 3
    for bn, (mean, var) in found.items():
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == 1


def test_with_fixed_weights_the_running_statistics_average_every_batch_equally():
    """lr 0: nothing moves, so nothing is carried, and the first 1/momentum batches are averaged
    with equal weights (no trace of the initial mean 0 and variance 1); then the usual average."""
    trainer = small_trainer()
    for module in trainer.net:
        for group in module.optimizer.param_groups:
            group["lr"] = 0.0
    batches = batches_of(trainer, 4)
    expected = [batch_statistics(trainer, x) for x, _ in batches]
    for x, y in batches:
        trainer.rule.train_step(trainer.net, x, y, list(range(len(trainer.net))))  # no scheduler step
    for bn in expected[0]:
        torch.testing.assert_close(bn.running_mean, sum(e[bn][0] for e in expected) / 4, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, sum(e[bn][1] for e in expected) / 4, rtol=1e-4, atol=1e-5)


def test_bn_stats_takes_two_values():
    with pytest.raises(UserError, match="unknown --bn-stats 'precise'"):
        small_trainer(bn_stats="precise")


# ------------------------------------------------------------------ the warning
def test_a_wide_early_gap_between_train_and_test_accuracy_is_flagged_in_one_line():
    message = evaluation_warning(34.4, 10.5, epoch=1)  # issue 28's run
    assert message is not None and "\n" not in message
    assert "epoch 1" in message and "34.4" in message and "10.5" in message and "evaluation" in message
    assert "val top-1" in evaluation_warning(56.4, 17.15, epoch=2, split="val")


@pytest.mark.parametrize("train,test,epoch", [
    (45.0, 30.0, 1),   # a gap, but within what an epoch's running mean against the end of the epoch can give
    (30.0, 45.0, 1),   # the usual early picture: the train-mode mean lags the held-out accuracy
    (99.9, 62.0, 3),   # overfitting after the training set has been seen a few times, however wide
    (100.0, 70.0, 30),
    (float("nan"), 10.0, 1),
    (None, 10.0, 1),
])
def test_ordinary_training_and_overfitting_are_not_flagged(train, test, epoch):
    assert evaluation_warning(train, test, epoch) is None


def test_the_thresholds():
    assert evaluation_warning(10.0 + SUSPICIOUS_GAP, 10.0, epoch=1) is None  # more than the margin
    assert evaluation_warning(10.5 + SUSPICIOUS_GAP, 10.0, epoch=EARLY_EPOCHS) is not None
    assert evaluation_warning(10.5 + SUSPICIOUS_GAP, 10.0, epoch=EARLY_EPOCHS + 1) is None
