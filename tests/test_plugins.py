"""Methods as plug-ins: the registry, typed method configs in a search space, a method of one's own from a file
(swept through real Ray and trained by `kdsweep train`), the comparison space's smoke twin, and the proof that the
redesign moved no SimKD result (bitwise-equal weights, unchanged run ids)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdsweep import typed_config
from kdsweep.cli import main
from kdsweep.methods import methods
from kdsweep.methods.simkd import SimKDConfig
from kdsweep.space import load_space
from kdsweep.space.loading import SpaceError
from kdsweep.sweep.driver import run_sweep
from helpers import save_teacher, tiny_space

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"

TOY = '''
"""A method of one's own, outside kdsweep: cross-entropy plus a made-up term, and a metric."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdsweep.methods import LossOutput, Method, register_method
from kdsweep.typed_config import knob


@dataclass(frozen=True)
class ToyConfig:
    weight: float = knob(0.5, ge=0, doc="weight of the hint2 term")


@register_method("toy_hint2")
class Toy(Method):
    Config = ToyConfig
    summary = "a test's own method"
    needs_teacher = False

    def losses(self, student, targets, labels, context):
        parts = {"ce": F.cross_entropy(student.logits, labels),
                 "hint2": self.config.weight * 1e-3 * student.logits.pow(2).mean()}
        return LossOutput(parts, {"toy_epoch": torch.tensor(float(context.epoch))})
'''


def space_text(storage, teacher, variants: str, axes: str = "{lr: [0.05], seed: [0]}", extra: str = "") -> str:
    """The tiny space with these variants: 192 training images, enough for the plug-in sweeps to beat chance."""
    return tiny_space(storage, teacher=teacher, variants=variants, axes=axes, extra=extra, experiment="methods",
                      train_size=192, test_size=64, max_failures=0)


def problems_of(tmp_path, text) -> list[tuple[str, str]]:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    return err.value.problems


def test_every_shipped_method_is_registered_with_a_typed_config():
    assert list(methods())[:5] == ["dkd", "fitnet", "kd", "simkd", "vanilla"]
    assert typed_config.knob_names(SimKDConfig) == (
        "taps", "multi_weights", "pairing", "last_weight", "factor", "loss", "temperature", "feature_weight", "gate",
        "gate_normalise", "ce_weight", "kd_weight", "kd_temperature", "eval_head")


def test_typed_config_checks_types_strictly_and_reports_every_problem():
    problems = typed_config.problems(SimKDConfig, {
        "factor": True, "temperature": "4", "multi_weights": [1.0], "last_weight": None, "loss": "L2", "gat": "x",
    }, "variants.v.method", owner="method simkd")
    assert problems == [
        ("variants.v.method.factor", "expected an integer, got True"),
        ("variants.v.method.temperature", "expected a number, got '4'"),
        ("variants.v.method.multi_weights", "expected a list of 2 numbers, got [1.0]"),
        ("variants.v.method.loss", "expected one of l2, kl, kl_raw (did you mean 'l2'?), got 'L2'"),
        ("variants.v.method.gat", "unknown knob 'gat' (did you mean 'gate'?); method simkd has: taps, multi_weights, "
                                  "pairing, last_weight, factor, loss, temperature, feature_weight, gate, "
                                  "gate_normalise, ce_weight, kd_weight, kd_temperature, eval_head"),
    ]  # last_weight: None is allowed (uniform weights)
    assert typed_config.problems(SimKDConfig, {"temperature": 0, "last_weight": 1.5}, "m") == [
        ("m.temperature", "expected a value > 0, got 0"), ("m.last_weight", "expected a value <= 1, got 1.5")]


def test_typed_recipes_take_integer_lists_of_any_length_and_keep_their_record():
    """The recipe is a typed config too: milestones are a list of integers >= 1 of any length, and the record run
    ids hash is the one kdsweep 0.1 hashed (no `optimizer` while it is SGD, milestones always spelt out)."""
    from kdsweep.engine.recipe import Recipe, TeacherRecipe, section_problems

    assert section_problems(Recipe, {"milestones": [1, 2.5], "epochs": 0, "optimizer": "adam"}, "recipe") == [
        ("recipe.milestones", "expected a list of integers, got [1, 2.5]"),
        ("recipe.epochs", "expected a value >= 1, got 0"),
        ("recipe.optimizer", "expected one of sgd, got 'adam'")]
    assert section_problems(Recipe, {"milestones": [0, 3]}, "recipe") == [
        ("recipe.milestones[0]", "expected a value >= 1, got 0")]
    assert section_problems(TeacherRecipe, {"epochs": 4, "milestones": [3, 2]}, "teacher.train") == [
        ("teacher.train.milestones", "must be strictly increasing, got [3, 2]")]
    recipe = typed_config.build(Recipe, {"epochs": 24, "milestones": [10, 20]})
    assert recipe.milestones == (10, 20) and Recipe.from_record(recipe.as_record()) == recipe
    assert Recipe(epochs=24).as_record() == {"epochs": 24, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4,
                                             "milestones": [15, 18, 21], "gamma": 0.1, "checkpoint_every": 10}
    teacher = typed_config.build(TeacherRecipe, {"epochs": 3, "lr": 0.1, "seed": 2})
    assert teacher.recipe() == Recipe(epochs=3) and (teacher.lr, teacher.seed) == (0.1, 2)


def test_a_space_mixing_methods_validates_each_knob_against_its_own_method(tmp_path):
    teacher = save_teacher(tmp_path / "t.pt")
    variants = "{simkd: {title: S, method: {taps: last}}, dkd: {title: D, method: {kind: dkd, taps: multi}}, " \
               "x: {title: X, method: {kind: dkdd}}}"
    extra = "overrides: [{when: {variant: dkd}, set: {gate: teacher_correct}}]\n"
    found = problems_of(tmp_path, space_text(tmp_path, teacher, variants, "{loss: [l2], lr: [0.05], seed: [0]}",
                                             extra))
    assert found == [
        ("variants.dkd.method.taps", "unknown knob 'taps'; method dkd has: alpha, beta, temperature, warmup_epochs, "
                                     "ce_weight"),
        ("variants.x.method.kind", "unknown method 'dkdd' (did you mean 'dkd'?); known: dkd, fitnet, kd, simkd, "
                                   "vanilla"),
        ("axes.loss", "variant dkd uses method dkd, which has no knob 'loss'; its knobs: alpha, beta, temperature, "
                      "warmup_epochs, ce_weight. Put that method's cells in a space of their own, or set the knob per "
                      "variant instead of as an axis"),
        ("overrides[0].set.gate", "unknown knob 'gate'; method dkd has: alpha, beta, temperature, warmup_epochs, "
                                  "ce_weight"),
    ]


def test_a_knob_valid_alone_but_wrong_for_the_pair_is_refused_before_anything_runs(tmp_path):
    teacher = save_teacher(tmp_path / "t.pt")
    variants = "{f: {title: F, method: {kind: fitnet, hint_stage: 4, schedule: two_stage}}}"
    assert problems_of(tmp_path, space_text(tmp_path, teacher, variants)) == [
        ("variants.f.method.hint_stage", "expected a stage both networks have: -4 to 3, got 4"),
        ("variants.f.method.hint_epochs", "expected at least 1 with schedule two_stage (the epochs trained on the "
                                          "hint alone)"),
    ]
    assert not (tmp_path / "methods").exists()


def test_shipped_spaces_keep_their_run_ids():
    """The ids of every run of the shipped spaces, as the code before methods became plug-ins computed them
    (tests/golden/make_space_run_ids.py): a changed id would retrain finished experiments."""
    from golden.make_space_run_ids import run_ids

    assert run_ids() == json.loads((GOLDEN / "space_run_ids.json").read_text())


def test_simkd_kd_and_vanilla_train_to_the_weights_they_trained_to_before_the_redesign(tmp_path):
    """Two CPU epochs of SimKD (four ablations), KD and vanilla: bitwise the digests recorded before methods became
    plug-ins (tests/golden/make_method_weights.py, commit d4eb3e2)."""
    from golden.make_method_weights import method_record, train_cases

    with pytest.warns(UserWarning, match="kl_raw"):
        digests = train_cases(tmp_path, method_record)
    assert digests == json.loads((GOLDEN / "method_weights.json").read_text())


def test_kdsweep_train_runs_a_plugin_method_and_records_its_parts(tmp_path, capsys):
    plugin = tmp_path / "toy.py"
    plugin.write_text(TOY)
    argv = ["train", "--plugin", str(plugin), "--student", "resnet8", "--method", "kind=toy_hint2",
            "--method", "weight=0.25", "--dataset", "synthetic", "--data", "train_size=128", "--data", "test_size=32",
            "--epochs", "2", "--checkpoint-every", "1", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "hint2 " in out and "toy_epoch 1" in out
    (progress,) = (tmp_path / "out" / "runs").glob("*/progress.json")
    history = json.loads(progress.read_text())["history"]
    assert [e["toy_epoch"] for e in history] == [0.0, 1.0]
    assert all(e["train_loss_hint2"] > 0 and e["train_loss_ce"] > 0 for e in history)
    assert main(["methods", "--plugin", str(plugin)]) == 0
    assert ("toy_hint2: a test's own method [no teacher]\n  weight           float >= 0 (default 0.5): weight of "
            "the hint2 term\n") in capsys.readouterr().out


def test_the_extension_guides_example_method_runs_as_written(tmp_path):
    """docs/extending.md's example, copied out of the page and trained for two epochs by `kdsweep train`."""
    page = (REPO / "docs" / "extending.md").read_text()
    plugin = tmp_path / "my_kd.py"
    plugin.write_text(page.split("```python\n", 1)[1].split("```", 1)[0])
    teacher = save_teacher(tmp_path / "t.pt")
    assert main(["train", "--plugin", str(plugin), "--student", "resnet8", "--teacher", "resnet8",
                 "--teacher-checkpoint", teacher, "--method", "kind=my_kd", "--method", "warmup_epochs=4",
                 "--dataset", "synthetic", "--data", "train_size=96", "--data", "test_size=32",
                 "--epochs", "2", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    (progress,) = (tmp_path / "out" / "runs").glob("*/progress.json")
    history = json.loads(progress.read_text())["history"]
    assert [e["ramp"] for e in history] == [0.25, 0.5]
    assert all(e["train_loss_kd"] > 0 and e["train_loss_ce"] > 0 for e in history)


def test_extending_guide_dataset_runs(tmp_path, capsys):
    """docs/extending.md's dataset example, copied out of the page: listed by `kdsweep datasets`, validated in a
    space (with its knobs checked) and trained by `kdsweep train`."""
    page = (REPO / "docs" / "extending.md").read_text()
    plugin = tmp_path / "stripes.py"
    plugin.write_text(page.split("## A dataset", 1)[1].split("```python\n", 1)[1].split("```", 1)[0])
    assert main(["datasets", "--plugin", str(plugin)]) == 0
    assert "stripes: toy stripes, 32 px [32 px, padding 4: 162 views]\n  train_subset" in capsys.readouterr().out
    space = tmp_path / "space.yaml"
    space.write_text(space_text(tmp_path / "results", save_teacher(tmp_path / "t.pt"), "{simkd: {title: SimKD}}",
                                extra=f"plugins: [{plugin}]\n").replace(
        "dataset: {name: synthetic, num_classes: 10, train_size: 192, test_size: 64, seed: 0}",
        "dataset: {name: stripes, classes: 6, images: 64}"))
    assert load_space(space).data.identity() == {"name": "stripes", "classes": 6, "images": 64,
                                                 "train_subset": None, "test_subset": None}
    with pytest.raises(SpaceError, match=r"dataset.clases: unknown knob 'clases' \(did you mean 'classes'\?\)"):
        load_space(space, ["dataset.clases=3"])
    assert main(["train", "--plugin", str(plugin), "--student", "resnet8", "--dataset", "stripes", "--data",
                 "classes=6", "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    (progress,) = (tmp_path / "out" / "runs").glob("*/progress.json")
    record = json.loads(progress.read_text())
    assert record["status"] == "completed" and len(record["history"]) == 1


@pytest.mark.slow
def test_a_plugin_method_sweeps_through_ray_and_reaches_every_table(ray_session, tmp_path):
    """A method registered from the space's `plugins` file: a loss part and a metric with new names reach
    epochs.parquet, trials.parquet and results.md with no list edited anywhere."""
    plugin = tmp_path / "toy.py"
    plugin.write_text(TOY)
    teacher = save_teacher(tmp_path / "t.pt")
    variants = ("{simkd: {title: SimKD, method: {taps: last}}, "
                "toy: {title: Toy, method: {kind: toy_hint2, weight: 0.25}}}")
    path = tmp_path / "space.yaml"
    path.write_text(space_text(tmp_path / "results", teacher, variants, extra=f"plugins: [{plugin}]\n"))
    outcome = run_sweep(load_space(path))
    assert outcome.failed == []
    root = tmp_path / "results" / "methods"
    epochs = pd.read_parquet(root / "epochs.parquet")
    toy, simkd = epochs[epochs.variant == "toy"], epochs[epochs.variant == "simkd"]
    assert toy.toy_epoch.tolist() == [0.0, 1.0] and simkd.toy_epoch.isna().all()
    assert (toy.train_loss_hint2 > 0).all() and simkd.train_loss_hint2.isna().all()
    assert (simkd.train_loss_feat > 0).all() and toy.train_loss_feat.isna().all()
    trials = pd.read_parquet(root / "trials.parquet").set_index("variant")
    assert trials.loc["toy", "toy_epoch"] == 0.5 and trials.loc["toy", "kind"] == "toy_hint2"
    assert trials.loc["toy", "weight"] == 0.25 and pd.isna(trials.loc["simkd", "weight"])
    assert trials.loc["toy", "loss"] == "toy_hint2" and trials.loc["simkd", "loss"] == "l2"
    report = (root / "results.md").read_text()
    assert "| Variant | Loss | lr | feat | ce | hint2 | toy_epoch |" in report
    assert "- **Toy** (`toy`): kind=toy_hint2, weight=0.25" in report


@pytest.mark.slow
def test_the_method_comparison_smoke_twin_runs_green(ray_session, tmp_path):
    space = load_space(REPO / "search_spaces" / "method_comparison_smoke.yaml", [f"storage={tmp_path}"])
    assert [r.method.kind for r in space.runs] == ["simkd", "kd", "fitnet", "dkd", "vanilla"]
    outcome = run_sweep(space)
    assert outcome.failed == []
    trials = pd.read_parquet(tmp_path / "method-comparison-smoke" / "trials.parquet")
    assert trials.status.tolist() == ["completed"] * 5
    assert (trials.best_acc > 20.0).all(), trials[["variant", "best_acc"]]  # chance is 10%
    assert trials.loss.tolist() == ["l2", "kd", "fitnet", "dkd", "vanilla"]
    report = (tmp_path / "method-comparison-smoke" / "results.md").read_text()
    for shown in ("DKD (logits)", "FitNet hint (L2)", "KD (logits)", "| tckd | nckd |"):
        assert shown in report


def test_a_teacherless_plugin_needs_no_teacher_file_but_a_missing_plugin_is_one_clear_problem(tmp_path):
    teacher = save_teacher(tmp_path / "t.pt")
    text = space_text(tmp_path, teacher, "{s: {title: S}}", extra=f"plugins: [{tmp_path / 'nope.py'}]\n")
    assert problems_of(tmp_path, text) == [
        ("plugins", f"plug-in {tmp_path / 'nope.py'} does not exist; `plugins` lists Python files that register "
                    "methods or datasets.")]
    assert torch.get_default_dtype() == torch.float32
