"""`kdsweep run --dry-run`: the expanded cells, their count, the trial groups and a rough cost estimate."""

from __future__ import annotations

from collections import Counter

from kdsweep.estimate import sweep_cost
from kdsweep.typed_config import knob_text
from kdsweep.space import Space
from kdsweep.storage import Store
from kdsweep.sweep import scope
from kdsweep.sweep.experiment import attach, legacy_ids
from kdsweep.sweep.plan import pending_runs, plan_groups, read_records


def describe(space: Space) -> str:
    f = space.file
    store = Store(space.root)
    legacy = legacy_ids(space, store)
    space = attach(space, store, legacy)
    change = scope.compare(space, store, legacy)
    records = read_records(store, [r.run_id for r in space.runs])
    todo = pending_runs(space.runs, records)
    groups = plan_groups(space, todo, store, f.group.max_students)
    lines = [f"experiment {f.experiment} -> {space.root}",
             f"teacher {f.teacher.arch} ({'trained first' if space.teacher.training_run else space.teacher.spec.checkpoint}), "
             f"student {f.student.arch}, dataset {space.data.name} ({space.data.geometry.image_size} px), "
             f"{space.runs[0].recipe.epochs} epochs", ""]
    if change.context:
        lines += ["this space changes what every run of the experiment shares; `kdsweep run` refuses it without "
                  "--as-new-experiment NAME or --replace:", *(f"  ! {c}" for c in change.context), ""]
    elif change.added or change.removed:
        lines += ["against the space the experiment last ran:", *change.lines(), ""]
    seeds = Counter(r.labels["cell_id"] for r in space.runs)
    lines.append(f"{'variant':<16} {'loss':<7} {'lr':>7}  seeds  knobs")
    shown = set()
    for run in space.runs:
        cell = run.labels["cell_id"]
        if cell in shown:
            continue
        shown.add(cell)
        m = run.method
        lines.append(f"{run.labels['variant']:<16} {m.loss:<7} {run.lr:>7g}  {seeds[cell]:>5}  {describe_method(m)}")
    lines += ["", f"{len(space.cells)} cells, {len(space.runs)} runs ({len(space.runs) - len(todo)} already finished)",
              f"{len(groups)} trial groups of up to {f.group.max_students} students "
              f"(resources per trial: {f.resources.cpu:g} CPU, {f.resources.gpu:g} GPU):"]
    for g in groups:
        lines.append(f"  {g.group_id}: seed {g.seed}, {len(g.runs)} students")
    lines += ["", *cost_lines(space, todo, groups)]
    return "\n".join(lines)


def cost_lines(space: Space, todo: list, groups: list) -> list[str]:
    """The rough cost of what is left, from the dataset's sizes (unknown for files not there yet)."""
    f, data = space.file, space.data
    sizes = data.dataset.sizes(data.config)
    if sizes is None:
        return [f"rough cost: unknown until dataset {data.name}'s files are in place (their count sets it)"]
    train_images = _size(data.train_subset, sizes.train_images)
    test_images = _size(data.test_subset, sizes.test_images)
    needs_teacher = [r for r in todo if r.method.method.needs_teacher]
    teacher_groups = [g for g in groups if any(r.method.method.needs_teacher for r in g.runs)]
    cost = sweep_cost(f.teacher.arch, f.student.arch, len(todo), len(needs_teacher), len(teacher_groups),
                      space.runs[0].recipe.epochs, train_images, test_images, sizes.num_classes,
                      data.geometry.image_size)
    return ["rough cost of what is left (FLOP counts; see kdsweep/estimate.py for the assumptions):",
            f"  {format_flops(cost.flops_shared)} with the teacher shared per group: "
            f"~{format_hours(cost.gpu_hours(cost.flops_shared))} of H100 at 30% of peak, "
            f"~{format_hours(cost.cpu_core_hours(cost.flops_shared))} of CPU cores",
            f"  {format_flops(cost.flops_naive)} if every student re-ran the teacher: "
            f"~{format_hours(cost.gpu_hours(cost.flops_naive))} of H100"]


def describe_method(method) -> str:
    """'kind=simkd taps=multi gate=teacher_correct': the method and the knobs that differ from its defaults."""
    default = type(method.config)()
    changed = [f"{k}={knob_text(v)}" for k, v in vars(method.config).items()
               if k != "loss" and v != getattr(default, k)]
    return " ".join([f"kind={method.kind}", *changed])


def format_flops(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:,.1f} {unit}"
    return f"{flops:,.0f} FLOP"


def format_hours(hours: float) -> str:
    if hours >= 100:
        return f"{hours:,.0f} hours"
    if hours >= 1:
        return f"{hours:.1f} hours"
    if hours * 60 >= 1:
        return f"{hours * 60:.0f} minutes"
    return f"{hours * 3600:.0f} seconds"


def _size(subset, full) -> int:
    return min(subset, full) if subset else full
