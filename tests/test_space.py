"""Search spaces: shipped spaces load and expand to the documented counts; bad input gets every problem at once."""

from pathlib import Path

import pytest

from kdsweep.errors import UserError
from kdsweep.space import SpaceError, load_space
from helpers import write_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"


def test_full_grid_expands_to_120_runs_in_the_documented_order():
    space = load_space(SPACES / "full_grid.yaml")
    assert len(space.runs) == 120 and len(space.cells) == 40
    first = space.runs[0]
    assert (first.labels["variant"], first.method.loss, first.lr, first.seed) == ("simkd", "l2", 0.001, 0)
    variants = list(dict.fromkeys(r.labels["variant"] for r in space.runs))
    assert variants == ["simkd", "multi", "all_layers", "labels"]
    assert sorted({r.lr for r in space.runs}) == [0.001, 0.005, 0.01, 0.05, 0.1]
    assert {r.seed for r in space.runs} == {0, 1, 2}
    assert {r.method.loss for r in space.runs} == {"l2", "kl"}
    labels = [r for r in space.runs if r.labels["variant"] == "labels"]
    assert {(r.method.taps, r.method.gate, r.method.gate_normalise) for r in labels} == {("last", "teacher_correct", "kept")}
    assert space.teacher.spec.arch == "resnet32x4" and space.runs[0].student_arch == "MobileNetV2_1_0"
    assert space.runs[0].recipe.milestone_epochs() == (150, 180, 210)
    assert len({r.run_id for r in space.runs}) == 120
    # The README's quick check: the milestones scale with a shorter run instead of being refused.
    short = load_space(SPACES / "full_grid.yaml", ["recipe.epochs=2", "axes.seed=[0]"])
    assert len(short.runs) == 40 and short.runs[0].recipe.milestone_epochs() == (1, 2, 2)


def test_seed_replication_knobs_cell_by_cell():
    with pytest.warns(UserWarning, match="loss 'kl_raw' is the seed report's KLDivLoss applied to raw feature maps"):
        space = load_space(SPACES / "seed_replication.yaml")
    assert len(space.runs) == 63  # 4 variants x 2 losses x 3 lr x 3 seeds, minus SimKD with KL
    by_cell = {(r.labels["variant"], r.method.loss): r.method for r in space.runs}
    assert ("simkd", "kl_raw") not in by_cell
    for (variant, loss), m in by_cell.items():
        if loss == "kl_raw":
            assert (m.ce_weight, m.kd_weight, m.kd_temperature, m.eval_head) == (1.0, 1.0, 4.0, "student")
        else:
            assert (m.ce_weight, m.kd_weight, m.eval_head) == (0.0, 0.0, "teacher_classifier")
    assert by_cell[("labels", "l2")].gate == "teacher_correct" and by_cell[("labels", "l2")].gate_normalise == "all"
    # The authors' "labels KL" runs took the multi-projector path, where the labels flag did nothing.
    assert by_cell[("labels", "kl_raw")] == by_cell[("multi", "kl_raw")]
    assert by_cell[("multi", "l2")].gate == "none" and by_cell[("all_layers", "l2")].taps == "all_blocks"
    assert sorted({r.lr for r in space.runs}) == [0.001, 0.01, 0.05]


def test_smoke_space_covers_every_variant_and_both_losses_with_two_seeds():
    space = load_space(SPACES / "smoke.yaml")
    cells = {(r.labels["variant"], r.method.loss) for r in space.runs}
    assert cells == {(v, loss) for v in ("simkd", "multi", "all_layers", "labels") for loss in ("l2", "kl")}
    assert {r.seed for r in space.runs} == {0, 1}
    assert space.data.name == "synthetic" and space.runs[0].recipe.epochs <= 2


def test_ids_are_stable_and_adding_seeds_keeps_existing_ids():
    base = load_space(SPACES / "full_grid.yaml")
    more = load_space(SPACES / "full_grid.yaml", ["axes.seed=[0, 1, 2, 3]", "axes.lr=[0.001, 0.005, 0.01, 0.05, 0.1, 0.2]"])
    assert {r.run_id for r in base.runs} < {r.run_id for r in more.runs}
    moved = load_space(SPACES / "full_grid.yaml", ["dataset.root=/mnt/shared/data", "dataset.download=false"])
    assert [r.run_id for r in moved.runs] == [r.run_id for r in base.runs]  # the dataset's place is not its identity
    assert len(more.runs) == 4 * 2 * 6 * 4
    shorter = load_space(SPACES / "full_grid.yaml", ["recipe.epochs=2", "recipe.milestones=null"])
    assert not {r.run_id for r in base.runs} & {r.run_id for r in shorter.runs}
    assert shorter.runs[0].recipe.milestone_epochs() == (1, 2, 2)


def test_overrides_on_the_command_line_are_validated_like_the_file():
    with pytest.raises(SpaceError) as err:
        load_space(SPACES / "full_grid.yaml", ["recipe.epochs=zero", "axes.seed=[0.5]", "recipe.nope=1"])
    text = str(err.value)
    assert "(3 problems)" in text
    assert "recipe.epochs: expected an integer, got 'zero'" in text
    assert "axes.seed[0]: Input should be a valid integer; got 0.5" in text
    assert "recipe.nope: unknown key 'nope'; recipe has: epochs, batch_size, optimizer" in text
    with pytest.raises(SpaceError, match="--set bad: expected KEY.PATH=VALUE, e.g. --set recipe.epochs=2"):
        load_space(SPACES / "full_grid.yaml", ["bad"])


VALID = """
experiment: t
teacher: {arch: resnet8x4, train: {epochs: 1}}
student: {arch: resnet8}
dataset: {name: synthetic, num_classes: 10, train_size: 64, test_size: 32}
recipe: {epochs: 2}
variants:
  simkd: {title: SimKD}
  multi: {title: Multi, method: {taps: multi}}
axes: {loss: [l2], lr: [0.01, 0.05], seed: [0, 1]}
baseline: {variant: simkd, accuracy: 75.43}
"""


def test_include_exclude_and_knob_axes(tmp_path):
    space = load_space(write_space(tmp_path, VALID + "exclude: [{variant: multi, lr: 0.05}]\n"))
    assert len(space.runs) == 6
    space = load_space(write_space(tmp_path, VALID + "include: [{seed: 0}]\n"))
    assert {r.seed for r in space.runs} == {0} and len(space.runs) == 4
    space = load_space(write_space(tmp_path, VALID.replace("seed: [0, 1]}", "seed: [0], temperature: [2.0, 4.0]}")))
    assert sorted({r.method.temperature for r in space.runs}) == [2.0, 4.0] and len(space.runs) == 8


def test_every_problem_of_a_file_is_reported_with_its_key_path(tmp_path):
    bad = VALID.replace("lr: [0.01, 0.05]", "lr: [-0.01, '0.05']").replace("epochs: 2}", "epochs: 2, epoch: 3}")
    bad = bad.replace("arch: resnet8}", "arch: resnet32x8}")
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, bad))
    text = str(err.value)
    assert f"search space {tmp_path / 'space.yaml'} is invalid (4 problems)" in text
    assert "axes.lr[0]: Input should be greater than 0; got -0.01" in text
    assert "axes.lr[1]: Input should be a valid number; got '0.05'" in text
    assert "recipe.epoch: unknown key 'epoch' (did you mean 'epochs'?); recipe has: epochs, batch_size" in text
    assert "student.arch: unknown model 'resnet32x8' (did you mean 'resnet32x4'?); known:" in text


def test_schema_and_cross_section_problems_are_reported_together(tmp_path):
    bad = VALID.replace("lr: [0.01, 0.05]", "lr: [0]").replace("variant: simkd,", "variant: simdk,")
    bad = bad.replace("recipe: {epochs: 2}", "recipe: {epochs: 2, milestones: [5]}")
    bad += "overrides: [{when: {seed: 0, loss: l2}, set: {temperature: 2.0}}]\n"
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, bad))
    text = str(err.value)
    assert "(3 problems)" in text
    assert "axes.lr[0]: Input should be greater than 0; got 0" in text  # the schema's
    assert "baseline.variant: unknown variant 'simdk' (did you mean 'simkd'?)" in text  # needs variants, which validated
    assert "recipe.milestones: [5] not below recipe.epochs (2)" in text
    # `overrides` needs the axes, which did not validate: its rule is checked once they do
    fixed = bad.replace("lr: [0]", "lr: [0.01]").replace("variant: simdk,", "variant: simkd,")
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, fixed.replace("milestones: [5]", "milestones: [1]")))
    assert "overrides[0].when.seed: overrides set knobs per cell and every seed of a cell trains with the same knobs" \
        in str(err.value) and "(1 problem)" in str(err.value)


def test_cross_section_problems(tmp_path):
    bad = VALID.replace("variant: simkd,", "variant: simdk,") + "exclude: [{variant: multy}]\n"
    bad = bad.replace("multi: {title: Multi, method: {taps: multi}}", "multi: {title: Multi, method: {loss: kl}}")
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, bad))
    text = str(err.value)
    assert "baseline.variant: unknown variant 'simdk' (did you mean 'simkd'?)" in text
    assert "exclude[0].variant: 'multy' is not a value of variant" in text
    assert "variants.multi.method: sets loss, which is an axis" in text


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("experiment: [unclosed\n", "is not valid YAML at line 2"),
    ("- a\n- b\n", "must be a YAML mapping at the top level"),
    ("variants:\n  a: {title: A}\n  a: {title: B}\n", "duplicate key 'a' (first at line 2)"),
])
def test_unreadable_documents(tmp_path, text, expected):
    path = write_space(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_space(path)
    assert expected in str(err.value) and str(path) in str(err.value)
    assert err.value.exit_code == 2


def test_rules_that_remove_every_cell(tmp_path):
    with pytest.raises(SpaceError, match="these rules remove every cell"):
        load_space(write_space(tmp_path, VALID + "include: [{seed: 0}]\nexclude: [{seed: 0}]\n"))


def test_milestones_past_the_end_are_refused(tmp_path):
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, VALID.replace("recipe: {epochs: 2}", "recipe: {epochs: 2, milestones: [1, 150]}")))
    assert "recipe.milestones: [150] not below recipe.epochs (2), so they would never take effect" in str(err.value)


def test_full_grid_groups_pack_students_by_the_teacher_maps_they_tap(tmp_path):
    """Within a seed, groups fill in order of taps (last, multi, all_blocks), so the all-layer students, whose
    teacher cache is never built, share groups with each other rather than spoiling the others' caches."""
    from kdsweep.storage import Store
    from kdsweep.sweep.plan import plan_groups

    space = load_space(SPACES / "full_grid.yaml", [f"storage={tmp_path}"])
    groups = plan_groups(space, space.runs, Store(space.root), max_students=8)
    assert len(groups) == 15 and all(len(g.runs) == 8 for g in groups)
    seed0 = [sorted({r.labels["variant"] for r in g.runs}) for g in groups if g.seed == 0]
    assert seed0 == [["simkd"], ["labels", "simkd"], ["labels", "multi"], ["all_layers", "multi"], ["all_layers"]]
    assert {g.gpu_share for g in groups} == {1.0}


def test_a_teacher_trained_in_the_experiment_keeps_its_weights_when_students_do_not(tmp_path):
    """execution.save_final: false drops the students' final.pt, never the teacher's: every group loads it."""
    from kdsweep.storage import Store
    from kdsweep.sweep.plan import plan_groups

    space = load_space(write_space(tmp_path, VALID + f"execution: {{save_final: false}}\nstorage: {tmp_path}\n"))
    store = Store(space.root)
    (teacher_group,) = plan_groups(space, [space.teacher.training_run], store, 1, teacher=False)
    assert teacher_group.save_final is True
    assert {g.save_final for g in plan_groups(space, space.runs, store, 8)} == {False}


def test_numbers_with_an_exponent_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads `5e-2` as a string; the space reads it as the number people mean, in the file and in
    # --set, and a plain integer stays an integer.
    text = VALID.replace("lr: [0.01, 0.05]", "lr: [1e-2, 5E-2]").replace("recipe: {epochs: 2}",
                                                                          "recipe: {epochs: 2, weight_decay: 5e-4}")
    space = load_space(write_space(tmp_path, text), ["teacher.train.lr=1e-1"])
    assert sorted({r.lr for r in space.runs}) == [0.01, 0.05]
    assert space.runs[0].recipe.weight_decay == 0.0005 and space.teacher.training_run.lr == 0.1
    assert [r.seed for r in space.runs][:2] == [0, 1] and all(type(r.seed) is int for r in space.runs)
