"""The methods SimKD is compared with - Hinton KD, DKD, FitNets - each checked against its paper's formula written
out here on small fixed tensors, and trained above chance on synthetic data."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kdsweep.engine import run_group
from kdsweep.engine.teacher import freeze
from kdsweep.methods import StepContext, build_method, compute_teacher_targets
from kdsweep.methods.dkd import dkd_per_sample
from kdsweep.methods.losses import kl_logits_per_sample
from kdsweep.methods.projector import pool_to
from kdsweep.models import create_model
from helpers import TINY_DATA, group_spec, method_spec, run_spec

S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0]], dtype=torch.float64)  # student logits, 4 classes
T = torch.tensor([[3.0, 0.0, -1.0, 1.0], [-1.0, 0.5, 2.0, 0.0]], dtype=torch.float64)  # teacher logits
Y = torch.tensor([0, 1])  # sample 0: the teacher agrees with the label; sample 1: it does not


def softmax(row, temperature):
    e = [math.exp(v / temperature) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def dkd_by_the_paper(s, t, y, temperature):
    """Zhao et al., CVPR 2022, Eq. (2)-(5): binary target/non-target KL and KL among the non-target classes,
    each x T^2 (as the authors' code scales them)."""
    p_s, p_t = softmax(s, temperature), softmax(t, temperature)
    b_s, b_t = [p_s[y], 1 - p_s[y]], [p_t[y], 1 - p_t[y]]
    rest_s = [p / (1 - p_s[y]) for i, p in enumerate(p_s) if i != y]
    rest_t = [p / (1 - p_t[y]) for i, p in enumerate(p_t) if i != y]
    return kl(b_t, b_s) * temperature ** 2, kl(rest_t, rest_s) * temperature ** 2, p_t[y]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_terms_are_the_papers_and_sum_to_hinton_kd(temperature):
    tckd, nckd = dkd_per_sample(S, T, Y, temperature)
    kd = kl_logits_per_sample(S, T, temperature)
    for i in range(2):
        want_t, want_n, p_target = dkd_by_the_paper(S[i].tolist(), T[i].tolist(), int(Y[i]), temperature)
        assert tckd[i].item() == pytest.approx(want_t, rel=1e-12)
        assert nckd[i].item() == pytest.approx(want_n, rel=1e-12)
        # Eq. (7): KD = TCKD + (1 - p_t) NCKD - the decomposition DKD starts from.
        assert kd[i].item() == pytest.approx(want_t + (1 - p_target) * want_n, rel=1e-12)
    if temperature == 4.0:  # pinned, so a change to the formula above cannot pass unnoticed
        assert [round(v, 4) for v in (*tckd.tolist(), *nckd.tolist())] == [0.0759, 0.0394, 0.6490, 0.8440]


def test_dkd_is_finite_for_saturated_logits():
    s = torch.tensor([[80.0, -80.0, 0.0]], requires_grad=True)
    tckd, nckd = dkd_per_sample(s, torch.tensor([[-90.0, 90.0, 0.0]]), torch.tensor([0]), 1.0)
    (tckd + nckd).sum().backward()
    assert torch.isfinite(tckd).all() and torch.isfinite(nckd).all() and torch.isfinite(s.grad).all()
    # The teacher is sure it is not y, the student sure it is: TCKD = log(1 / (1 - p_s[y])) = 80.
    assert tckd.item() == pytest.approx(80.0, rel=1e-4)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=10), freeze(create_model("resnet20", num_classes=10))


def losses(method, student, teacher, images, labels, epoch=0, epochs=10):
    targets = compute_teacher_targets(teacher, images, method.teacher_needs())
    out = student.forward_intermediates(images, blocks=method.needs_student_blocks, head=method.needs_student_head)
    return method.losses(out, targets, labels, StepContext(epoch, epochs)), out, targets


def test_dkd_parts_follow_the_linear_warm_up(nets):
    student, teacher = nets
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    method = build_method(method_spec(kind="dkd", alpha=0.5, beta=2.0, warmup_epochs=4), student, teacher)
    logits = teacher(images)
    tckd, nckd = dkd_per_sample(student(images), logits, labels, 4.0)
    for epoch, weight in ((0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)):  # min(e / 4, 1) at 1-based epoch e
        out, s, targets = losses(method, student, teacher, images, labels, epoch)
        assert list(out.parts) == ["ce", "tckd", "nckd"]
        scheduled = method.losses(s, targets, labels, method.scheduled(StepContext(epoch, 10), torch.device("cpu")))
        for name in out.parts:  # the training loop's path: the warm-up weight as a tensor from `schedule`
            torch.testing.assert_close(scheduled.parts[name], out.parts[name], rtol=1e-6, atol=0)
        torch.testing.assert_close(out.parts["tckd"], weight * 0.5 * tckd.mean(), rtol=1e-6, atol=0)
        torch.testing.assert_close(out.parts["nckd"], weight * 2.0 * nckd.mean(), rtol=1e-6, atol=0)
        torch.testing.assert_close(out.parts["ce"], F.cross_entropy(student(images), labels), rtol=1e-6, atol=0)


def test_kd_is_hintons_loss_with_repdistillers_weights(nets):
    student, teacher = nets
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    out, s, targets = losses(build_method(method_spec(kind="kd"), student, teacher), student, teacher, images, labels)
    p_t = F.softmax(targets.logits / 4, dim=1)
    kl_sum = (p_t * (p_t.log() - F.log_softmax(s.logits / 4, dim=1))).sum(dim=1).mean()
    torch.testing.assert_close(out.parts["kd"], 0.9 * 16 * kl_sum, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.parts["ce"], 0.1 * F.cross_entropy(s.logits, labels), rtol=1e-6, atol=0)


def test_fitnet_hint_is_l2_through_the_regressor_on_the_stage_before_the_last(nets):
    student, teacher = nets
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    method = build_method(method_spec(kind="fitnet"), student, teacher)
    assert (method.guided.index, method.hint.index) == (2, 2)  # resnet8 / resnet20: stem + 3 stages; -2 is layer2
    out, s, _ = losses(method, student, teacher, images, labels)
    hint_map = teacher.forward_intermediates(images, head=False).stages[2]  # 32 channels, 16 x 16
    guided = method.regressor(pool_to(s.stages[2], 16))
    torch.testing.assert_close(out.parts["hint"], 100.0 * ((guided - hint_map) ** 2).mean(), rtol=1e-6, atol=0)
    assert list(out.parts) == ["hint", "ce"]


def test_fitnet_two_stage_trains_the_hint_alone_first(nets):
    student, teacher = nets
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    method = build_method(method_spec(kind="fitnet", schedule="two_stage", hint_epochs=2, kd_weight=0.5),
                          student, teacher)
    for epoch, parts in ((0, ["hint"]), (1, ["hint"]), (2, ["ce", "kd"])):
        student.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        out, _, _ = losses(method, student, teacher, images, labels, epoch)
        assert list(out.parts) == parts
        sum(out.parts.values()).backward()
        hint_stage = epoch < 2
        assert (student.layer3[0].conv1.weight.grad is None) == hint_stage  # above the guided layer: stage 2 only
        assert (student.fc.weight.grad is None) == hint_stage
        assert (method.regressor[0].weight.grad is None) == (not hint_stage)


def test_fitnet_refuses_a_stage_the_networks_lack(nets):
    student, teacher = nets
    with pytest.raises(ValueError, match=r"fitnet hint_stage: a stage both networks have: -4 to 3, got 4"):
        build_method(method_spec(kind="fitnet", hint_stage=4), student, teacher)


def test_fitnet_two_stage_ends_above_chance(tmp_path):
    """One hint-only epoch, then one epoch of CE: the student is still clearly above chance (10%)."""
    data = TINY_DATA.with_knobs(train_size=512, test_size=128)  # 16 steps an epoch at batch 32
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10)
    path = tmp_path / "teacher.pt"
    torch.save({"model": teacher.state_dict()}, path)
    run = run_spec("fitnet-2stage", kind="fitnet", schedule="two_stage", hint_epochs=1, epochs=2, batch_size=32)
    (record,) = run_group(group_spec([run], tmp_path / "out", str(path), data=data))
    first, second = record["history"]
    assert "train_loss_hint" in first and "train_loss_ce" not in first
    assert "train_loss_ce" in second and "train_loss_hint" not in second
    assert record["best_acc"] > 20.0, record["best_acc"]
