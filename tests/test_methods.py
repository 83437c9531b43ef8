"""SimKD and its ablation knobs: tap plans, projector shapes, what is trained and what stays frozen."""

from contextlib import nullcontext

import pytest
import torch

from kdsweep.engine.teacher import freeze
from kdsweep.methods import StepContext, TargetKey, build_method, compute_teacher_targets
from kdsweep.methods.simkd import SimKDConfig
from kdsweep.methods.taps import FeatureRef, plan_taps
from kdsweep.models import create_model
from helpers import method_spec


@pytest.fixture(scope="module")
def pair():
    return create_model("MobileNetV2_1_0"), create_model("resnet32x4")


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_simkd_last_pair_matches_the_reference(pair):
    student, teacher = pair
    (tap,) = plan_taps(SimKDConfig(), student.feature_info, teacher.feature_info)
    assert (tap.student, tap.teacher) == (FeatureRef("stage", 4), FeatureRef("stage", 3))
    assert (tap.student_channels, tap.teacher_channels, tap.student_size, tap.teacher_size) == (320, 256, 2, 8)
    assert tap.size == 2 and tap.weight == 1.0 and tap.feeds_classifier
    method = build_method(method_spec(), student, teacher)
    assert params(method) == 222_208  # 320 -> 128 -> 128 -> 256, bias-free convs + BN
    assert list(method.state_dict())[:2] == ["projectors.0.transfer.0.weight", "projectors.0.transfer.1.weight"]


def test_multi_taps_add_the_previous_stage_with_weights_one_third_two_thirds(pair):
    student, teacher = pair
    prev, last = plan_taps(SimKDConfig(taps="multi"), student.feature_info, teacher.feature_info)
    assert (prev.student_channels, prev.teacher_channels, prev.size) == (96, 128, 4)
    assert (prev.weight, last.weight) == pytest.approx((1 / 3, 2 / 3))
    assert not prev.feeds_classifier and last.feeds_classifier
    method = build_method(method_spec(taps="multi"), student, teacher)
    assert params(method.projectors[0]) == 96 * 64 + 64 * 64 * 9 + 64 * 128 + 2 * (64 + 64 + 128)


def test_all_blocks_index_pairing_as_the_authors_ran_it(pair):
    student, teacher = pair
    taps = plan_taps(SimKDConfig(taps="all_blocks"), student.feature_info, teacher.feature_info)
    assert len(taps) == 15
    assert [(t.student.index, t.teacher.index) for t in taps] == [(k + 2, k) for k in range(15)]
    assert all(t.weight == pytest.approx(1 / 15) for t in taps)
    assert [t.feeds_classifier for t in taps] == [False] * 14 + [True]
    method = build_method(method_spec(taps="all_blocks"), student, teacher)
    assert round(params(method) / 1e6, 2) == 1.34  # "1.34 M projector parameters in total"


def test_all_blocks_last_weight_and_relative_depth(pair):
    student, teacher = pair
    cfg = SimKDConfig(taps="all_blocks", last_weight=0.5, pairing="relative_depth")
    taps = plan_taps(cfg, student.feature_info, teacher.feature_info)
    assert taps[-1].weight == 0.5 and taps[0].weight == pytest.approx(0.5 / 14)
    assert sum(t.weight for t in taps) == pytest.approx(1.0)
    # 15 teacher blocks, 17 student blocks: every teacher block, student blocks spread to the end.
    assert [t.teacher.index for t in taps] == list(range(15))
    assert [t.student.index for t in taps] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]
    small = plan_taps(SimKDConfig(taps="all_blocks"), create_model("resnet8x4").feature_info, teacher.feature_info)
    assert [(t.student.index, t.teacher.index) for t in small] == [(0, 12), (1, 13), (2, 14)]


def test_teacher_needs(pair):
    student, teacher = pair
    needs = build_method(method_spec(), student, teacher).teacher_needs()
    assert needs.features == {TargetKey(FeatureRef("stage", 3), 2)} and not needs.logits
    gated = build_method(method_spec(gate="teacher_correct"), student, teacher).teacher_needs()
    assert gated.logits
    kl = build_method(method_spec(loss="kl"), student, teacher).teacher_needs()
    assert kl.features == frozenset() and kl.logits  # the classifier pair compares logits only
    assert build_method(method_spec(kind="vanilla"), student, None).teacher_needs().any is False


@pytest.mark.parametrize("knobs", [
    {}, {"taps": "multi"}, {"taps": "all_blocks"}, {"gate": "teacher_correct"}, {"loss": "kl"},
    {"loss": "kl_raw", "ce_weight": 1.0, "kd_weight": 1.0, "eval_head": "student"},
    {"taps": "multi", "loss": "kl", "gate": "teacher_correct", "gate_normalise": "all"},
])
def test_training_step_updates_student_and_projectors_never_the_teacher(knobs):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8"), freeze(create_model("resnet20"))
    replication_only = pytest.warns(UserWarning, match="kl_raw") if knobs.get("loss") == "kl_raw" else nullcontext()
    with replication_only:
        method = build_method(method_spec(**knobs), student, teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,))
    targets = compute_teacher_targets(teacher, images, method.teacher_needs())
    out = student.forward_intermediates(images, blocks=method.needs_student_blocks, head=method.needs_student_head)
    result = method.losses(out, targets, labels, StepContext(0, 1))
    loss = sum(result.parts.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in method.projectors.parameters())
    assert student.layer3[-1].conv2.weight.grad is not None
    # The student's own classifier learns only through auxiliary terms.
    assert (student.fc.weight.grad is not None) == (method.config.ce_weight > 0 or method.config.kd_weight > 0)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert ("masked_frac" in result.metrics) == (method.config.gate == "teacher_correct")
    logits = method.predict(out)
    assert logits.shape == (8, 100)


def test_simkd_prediction_goes_through_projector_and_teacher_classifier(pair):
    student, teacher = pair
    method = build_method(method_spec(), student, freeze(teacher)).eval()
    student.eval()
    x = torch.randn(2, 3, 32, 32)
    out = student.forward_intermediates(x, head=False)
    projected = method.projectors[0](out.stages[-1], 2)
    expected = teacher.fc(projected.mean(dim=(2, 3)))
    assert torch.allclose(method.predict(out), expected, atol=1e-6)
    assert "teacher_classifier" not in dict(method.named_modules())
    assert not any(k.startswith("teacher") for k in method.state_dict())


def test_each_kind_has_its_own_defaults_and_knobs():
    assert method_spec().config.eval_head == "teacher_classifier"
    assert method_spec().as_record()["kind"] == "simkd"
    kd = method_spec(kind="kd").config
    assert (kd.ce_weight, kd.kd_weight, kd.temperature) == (0.1, 0.9, 4.0)  # RepDistiller's -r 0.1 -a 0.9
    assert method_spec(kind="vanilla").as_record() == {"kind": "vanilla"}
    with pytest.raises(ValueError) as err:
        method_spec(loss="nope", factor=0)
    assert str(err.value) == ("method.loss: expected one of l2, kl, kl_raw, got 'nope'; "
                              "method.factor: expected a value >= 1, got 0")
