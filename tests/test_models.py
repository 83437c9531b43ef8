"""The model zoo against the SimKD reference code.

Golden data (`golden/reference_models.json`) comes from the reference models (DefangChen/SimKD models/*.py);
`golden/make_reference_models.py CLONE` regenerates it byte for byte from a clone of that repository. It holds
parameter counts, state_dict keys and shapes, the shapes of `is_feat` features, the sums of a
`torch.manual_seed(0)` init, and the logits of a deterministically filled model (see model_fill.py) on a fixed input.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdsweep.errors import UserError
from kdsweep.models import FeatureModel, create_model, list_models, register_model
from model_fill import GOLDEN_INPUT_SHAPE, filled_state_dict, golden_input

GOLDEN = json.loads((Path(__file__).parent / "golden" / "reference_models.json").read_text())
MODELS = list_models()

# Numbers the project relies on elsewhere (README, SimKD paper tables), pinned independently of the golden file.
PINNED_PARAMS = {
    "resnet32x4": 7_433_860,
    "resnet8x4": 1_233_540,
    "MobileNetV2": 812_836,
    "MobileNetV2_1_0": 2_353_060,
}
PINNED_BLOCKS = {"resnet32x4": 15, "MobileNetV2": 17, "MobileNetV2_1_0": 17}


def _filled(name: str) -> FeatureModel:
    model = create_model(name)
    model.load_state_dict(filled_state_dict(model), strict=True)
    return model.eval()


@functools.cache
def _outputs(name: str) -> dict:
    """Every forward of a filled model the tests inspect, computed once per model (CPU forwards dominate)."""
    model, x = _filled(name), golden_input()
    with torch.no_grad():
        return {
            "info": model.feature_info,
            "x": x,
            "is_feat": model(x, is_feat=True),
            "all": model.forward_intermediates(x, blocks=True),
            "no_head": model.forward_intermediates(x, head=False),
        }


def test_registry_matches_golden():
    assert set(MODELS) == set(GOLDEN["models"])


def test_golden_input_is_reproducible():
    # If torch's CPU generator ever changes, every logits test fails; this one says why.
    x = golden_input()
    assert list(x.shape) == GOLDEN["input"]["shape"] == list(GOLDEN_INPUT_SHAPE)
    assert x.double().sum().item() == pytest.approx(GOLDEN["input"]["sum"], rel=1e-9)
    assert x.flatten()[:4].tolist() == pytest.approx(GOLDEN["input"]["first"], rel=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_param_count(name):
    n = sum(p.numel() for p in create_model(name).parameters())
    assert n == GOLDEN["models"][name]["params"]
    if name in PINNED_PARAMS:
        assert n == PINNED_PARAMS[name]


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_names_and_shapes_match_reference(name):
    got = [[k, list(v.shape)] for k, v in create_model(name).state_dict().items()]
    assert got == GOLDEN["models"][name]["state_dict"]


@pytest.mark.parametrize("name", MODELS)
def test_init_matches_reference(name):
    # Same modules created and initialised in the same order: a seeded build draws exactly the reference's weights.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sd = create_model(name).state_dict()
    total = sum(v.double().sum().item() for v in sd.values())
    abs_total = sum(v.double().abs().sum().item() for v in sd.values())
    assert [total, abs_total] == pytest.approx(GOLDEN["models"][name]["init_seed0_sum_abssum"], rel=1e-7)


def _checkpoint_layouts(model: nn.Module, sd: dict, every: bool) -> dict[str, object]:
    """What torch.save wrote in each codebase: SimKD's train_teacher.py; with `every`, also RepDistiller's (with the
    optimizer) and a bare state_dict."""
    simkd = {"epoch": 240, "best_acc": torch.tensor(73.5), "model": sd}
    if not every:
        return {"simkd": simkd}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(golden_input()).sum().backward()
    optimizer.step()  # a real optimizer state: momentum buffers next to plain numbers
    return {
        "simkd": simkd,
        "repdistiller": {"epoch": 240, "model": sd, "accuracy": 73.5, "optimizer": optimizer.state_dict()},
        "bare": sd,
    }


@pytest.mark.parametrize("name", MODELS)
def test_teacher_loader_reads_the_reference_checkpoint_layouts(name, tmp_path):
    # Through kdsweep's real loader (engine/teacher.load_teacher): every model in SimKD's layout; the other two
    # layouts on two models (unwrapping does not depend on the architecture).
    from kdsweep.engine.teacher import load_teacher

    sd = filled_state_dict(create_model(name))
    layouts = _checkpoint_layouts(create_model(name), sd, every=name in ("resnet8", "MobileNetV2"))
    for layout, checkpoint in layouts.items():
        path = tmp_path / f"{layout}.pth"
        torch.save(checkpoint, path)
        teacher, digest = load_teacher(name, str(path), num_classes=100, device=torch.device("cpu"))
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters()), layout
        loaded = teacher.state_dict()
        assert list(loaded) == list(sd), layout
        for key, value in sd.items():
            assert torch.equal(loaded[key], value), (layout, key)


@pytest.mark.parametrize("name", MODELS)
def test_filled_model_reproduces_reference_logits(name):
    golden, out = GOLDEN["models"][name], _outputs(name)
    feats, logits = out["is_feat"]
    expected = torch.tensor(golden["logits"])
    assert [list(f.shape) for f in feats] == golden["is_feat_shapes"]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("name", ["resnet8", "MobileNetV2"])
def test_plain_forward_returns_logits(name):
    # FeatureModel.forward is shared; two small models are enough to pin `model(x)` == is_feat logits.
    out = _outputs(name)
    with torch.no_grad():
        logits = _filled(name)(out["x"])
    assert torch.equal(logits, out["is_feat"][1])


@pytest.mark.parametrize("name", MODELS)
def test_feature_info_matches_forward(name):
    o = _outputs(name)
    info, x, out, no_head = o["info"], o["x"], o["all"], o["no_head"]
    feats, logits = o["is_feat"]

    n = x.shape[0]
    stage_shapes = [(n, c, info.stage_size(i), info.stage_size(i)) for i, c in enumerate(info.stage_channels)]
    block_shapes = [(n, c, info.block_size(i), info.block_size(i)) for i, c in enumerate(info.block_channels)]
    assert [tuple(s.shape) for s in out.stages] == stage_shapes
    assert [tuple(b.shape) for b in out.blocks] == block_shapes
    assert len(info.stage_reductions) == len(info.stage_channels)
    assert len(info.block_reductions) == len(info.block_channels)
    if name in PINNED_BLOCKS:
        assert len(out.blocks) == PINNED_BLOCKS[name]
    assert torch.equal(out.blocks[-1], out.stages[-1])

    # Reference API: stage maps, then the pooled vector, then logits.
    assert out.pooled.shape == (n, info.pooled_dim)
    assert len(feats) == len(out.stages) + 1
    for a, b in zip(feats, [*out.stages, out.pooled]):
        assert torch.equal(a, b)
    assert torch.equal(logits, out.logits)

    # head=False: same stage maps, no head computed, blocks only on request.
    assert no_head.pooled is None and no_head.logits is None and no_head.blocks is None
    assert all(torch.equal(a, b) for a, b in zip(no_head.stages, out.stages))


@pytest.mark.parametrize("name", MODELS)
def test_classifier_layer(name):
    model = create_model(name, num_classes=10)
    fc = model.classifier_layer
    assert isinstance(fc, nn.Linear)
    assert (fc.in_features, fc.out_features) == (model.feature_info.pooled_dim, 10)
    assert any(m is fc for m in model.modules())


def test_unknown_model_suggests_and_lists():
    with pytest.raises(UserError) as err:
        create_model("resnet32x8")
    msg = str(err.value)
    assert "unknown model 'resnet32x8'" in msg
    assert "did you mean 'resnet32x4'" in msg
    assert all(name in msg for name in MODELS)


def test_registering_twice_raises():
    before = list_models()
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet32x4")(lambda num_classes=100: None)
    assert list_models() == before


def test_golden_logits_are_informative():
    # Guards the fill rule: the logits tolerance (1e-4 of the largest logit) must be far below how much the
    # logits differ between the two images and across classes, or a wrong forward could still pass.
    for name, golden in GOLDEN["models"].items():
        logits = torch.tensor(golden["logits"])
        scale = logits.abs().max().item()
        assert logits.shape == (GOLDEN_INPUT_SHAPE[0], 100), name
        assert math.isfinite(scale) and 0.1 < scale < 1e6, name
        assert (logits[0] - logits[1]).abs().max() > 1e-2 * scale, name
        assert logits.std(dim=1).min() > 1e-1 * scale, name
