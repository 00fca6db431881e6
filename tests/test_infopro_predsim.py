"""The baselines of AugLocal: InfoPro (CE + reconstruction) and PredSim (prediction + similarity
matching), against hand-written references on tiny inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_config
from locallearn import Trainer
from locallearn.errors import UserError
from locallearn.models import create_model
from locallearn.rules import RULES
from locallearn.rules.infopro import infopro_classifier, linear_schedule, reconstruction_target
from locallearn.rules.predsim import pooled_sizes, similarity_matrix

pytestmark = pytest.mark.usefixtures("keep_gradients")  # these tests read .grad after a step


# ------------------------------------------------------------------------------------- PredSim
def reference_similarity(x: torch.Tensor) -> torch.Tensor:
    """Nøkland & Eidnes' adjusted cosine similarity, written with loops."""
    x = x.detach()
    n = x.shape[0]
    rows = []
    for i in range(n):
        v = x[i]
        if v.dim() > 1 and v.shape[0] > 3 and v.shape[1] > 1:
            v = torch.stack([c.flatten().std() for c in v])  # std of each channel over positions
        v = v.flatten()
        v = v - v.mean()
        rows.append(v / (1e-8 + math.sqrt(float((v * v).sum().detach()))))
    return torch.tensor([[max(-1.0, min(1.0, float(rows[i] @ rows[j]))) for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("shape", [(5,), (6, 4, 4), (2, 3, 3), (8, 7)])
def test_similarity_matrix_matches_the_loop_reference(shape):
    torch.manual_seed(0)
    x = torch.randn(4, *shape)
    torch.testing.assert_close(similarity_matrix(x), reference_similarity(x).to(x.dtype), rtol=1e-5, atol=1e-6)


def test_label_similarity_is_one_within_a_class_and_minus_one_over_c_minus_one_across():
    y = torch.tensor([0, 0, 1, 2])
    s = similarity_matrix(F.one_hot(y, 3).float())
    expected = torch.tensor([[1, 1, -.5, -.5], [1, 1, -.5, -.5], [-.5, -.5, 1, -.5], [-.5, -.5, -.5, 1]])
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-6)


def test_pooled_sizes_follow_the_authors_kernel_doubling():
    assert pooled_sizes((16, 32, 32), 512) == (4, 8)   # h, w, h, w, h: 16 * 4 * 8 = 512
    assert pooled_sizes((32, 16, 16), 512) == (4, 4)
    assert pooled_sizes((64, 8, 8), 512) == (2, 4)
    assert pooled_sizes((8, 8, 8), 512) == (8, 8)      # already small enough
    assert pooled_sizes((64, 40), 512) == (5,)         # 1-d: 40 -> 20 -> 10 -> 5
    assert pooled_sizes((1024,), 512) == ()


def test_predsim_gradient_is_the_weighted_prediction_and_similarity_loss():
    trainer = Trainer(tiny_config(method="predsim", modules=3, lr=1e-30, momentum=0.0, weight_decay=0.0,
                                  max_steps=1, rule_options={"predsim_beta": 0.9}))
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    stats = trainer.rule.train_step(trainer.net, x, y, active=[0, 1, 2])
    h = x
    for module in trainer.net:
        out = module(h)
        prediction = F.cross_entropy(module.head(out), y)
        if module.is_last:
            loss = prediction
        else:
            s_h = reference_similarity(module.head.similarity(out))
            s_y = reference_similarity(F.one_hot(y, 4).float())
            similarity = ((s_h - s_y) ** 2).mean()
            torch.testing.assert_close(stats[f"sim/{module.index}"], similarity, rtol=1e-4, atol=1e-6)
            # differentiable version of the same reference for the gradient check
            loss = 0.1 * prediction + 0.9 * F.mse_loss(similarity_matrix(module.head.similarity(out)),
                                                       s_y.to(out.dtype))
        torch.testing.assert_close(stats[f"loss/{module.index}"], loss.detach(), rtol=1e-4, atol=1e-6)
        params = module.trainable_parameters()
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
        h = out.detach()


# ------------------------------------------------------------------------------------- InfoPro
def test_reconstruction_target_recovers_an_affinely_normalised_image():
    torch.manual_seed(0)
    image = torch.rand(6, 3, 5, 5)
    image[0, :, 0, 0], image[1, :, 0, 0] = 0.0, 1.0  # every channel spans [0, 1] in the batch
    normalised = (image - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(reconstruction_target(normalised), image, rtol=0, atol=1e-6)


def test_loss_weights_move_linearly_from_the_first_to_module_k_minus_2():
    rule = RULES.get("infopro")()
    rule.n_modules = 16
    assert rule.loss_weights(0) == (5.0, 0.05)
    assert rule.loss_weights(14) == pytest.approx((0.2, 0.5))
    assert rule.loss_weights(7) == pytest.approx(((5.0 + 0.2) / 2, (0.05 + 0.5) / 2))
    assert linear_schedule(3.0, 1.0, 0, 2) == 3.0  # K = 2: the one aux module gets the first weights


def test_infopro_classifier_is_1c2f_with_the_next_stage_width():
    model = create_model("resnet32", (3, 32, 32), 10)
    first = infopro_classifier(model, 0)[0]
    assert (first.in_channels, first.out_channels, first.stride) == (16, 32, (2, 2))
    middle = infopro_classifier(model, 8)[0]
    assert (middle.in_channels, middle.out_channels, middle.stride) == (32, 64, (2, 2))
    last = infopro_classifier(model, 14)
    assert (last[0].in_channels, last[0].out_channels, last[0].stride) == (64, 64, (1, 1))
    assert [m.out_features for m in last if isinstance(m, torch.nn.Linear)] == [128, 10]


def bce_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """InfoPro's sigmoid + binary cross-entropy, in float64 (1 - p loses digits in float32)."""
    p = torch.sigmoid(logits.double())
    target = target.double()
    return (-(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()).float()


@pytest.mark.parametrize("dataset_shape,model", [((3, 8, 8), "resnet20"), ((1, 24), "cnn1d"), ((2, 4, 4), "mlp")])
def test_infopro_step_is_the_weighted_reconstruction_and_cross_entropy(dataset_shape, model):
    kwargs = {"widths": (4, 4, 8, 8, 8, 8, 8, 8)} if model == "cnn1d" else {"width": 4}
    trainer = Trainer(tiny_config(method="infopro", model=model, modules=4, lr=1e-30, momentum=0.0,
                                  weight_decay=0.0, max_steps=1, model_kwargs=kwargs,
                                  dataset_kwargs={"shape": dataset_shape, "classes": 4, "train": 64, "test": 32}))
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    rule = trainer.rule
    messages = []
    original = rule.module_step
    rule.module_step = lambda module, h, y_, message, stats: messages.append(message) or original(
        module, h, y_, message, stats)
    stats = rule.train_step(trainer.net, x, y, active=[0, 1, 2, 3])
    assert messages[0] == {} and all(torch.equal(m["image"], x) for m in messages[1:])
    target = reconstruction_target(x)
    assert float(target.min()) == 0.0 and float(target.max()) == 1.0
    h = x
    for module in trainer.net:
        out = module(h)
        cross_entropy = F.cross_entropy(module.head(out), y)
        if module.is_last:
            loss = cross_entropy
        else:
            reconstruction = bce_reference(module.head.decoder.logits(out), target)
            assert module.head.decoder.logits(out).shape == x.shape
            w_x = 5.0 + (0.2 - 5.0) * module.index / 2
            w_y = 0.05 + (0.5 - 0.05) * module.index / 2
            loss = w_x * reconstruction + w_y * cross_entropy
            torch.testing.assert_close(stats[f"recon/{module.index}"], reconstruction.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats[f"loss/{module.index}"], loss.detach(), rtol=1e-5, atol=1e-6)
        params = module.trainable_parameters()
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
        h = out.detach()


@pytest.mark.parametrize("method", ["infopro", "predsim"])
def test_baselines_train_from_the_command_line(tmp_path, method):
    from locallearn.cli import main

    code = main(["train", "--method", method, "--model", "resnet20", "--dataset", "synthetic",
                 "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=64", "test=32", "--model-kwargs", "width=4",
                 "--split", "layer", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / method)])
    assert code == 0


@pytest.mark.parametrize("method,options,message", [
    ("infopro", {"recon_weight_first": -1.0}, "recon-weight-first"),
    ("infopro", {"infopro_hidden": 0}, "infopro-hidden"),
    ("predsim", {"predsim_beta": 1.5}, "predsim-beta"),
    ("predsim", {"predsim_features": 0}, "predsim-features")])
def test_impossible_options_are_user_errors(method, options, message):
    with pytest.raises(UserError, match=message):
        RULES.get(method)(**options)
