"""What a space changes about the experiment it runs in, said before anything trains.

Compared with the space the experiment last ran (its space.yaml, with the teacher identity it recorded):
- runs the space adds (new seeds, lrs, variants) train;
- runs it no longer names stay on disk and are still reported, marked as outside the space
  (`kdsweep report --only-current` leaves them out);
- a change to what every run shares (student, recipe, dataset, teacher: `experiment_context`) would make every run
  a new one beside the old: refused unless the user says where the new runs go (`--as-new-experiment NAME`) or that
  they replace the old ones here (`--replace`; the old runs stay on disk and leave the tables).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

from kdsweep.engine import RunSpec
from kdsweep.errors import UserError
from kdsweep.space import Space
from kdsweep.space.expand import expand_runs, experiment_context
from kdsweep.ids import CONTENT
from kdsweep.storage import Store
from kdsweep.sweep.experiment import SPACE, StoredSpaceProblem, load_stored_space, read_identity, with_ids
from kdsweep.sweep.plan import read_records

_SHOWN = 4  # values listed per axis in a summary


@dataclass
class ScopeChange:
    context: list[str] = field(default_factory=list)  # "recipe.epochs: 2 -> 3", for each shared setting changed
    added: list[RunSpec] = field(default_factory=list)  # named by the space, not by the previous one
    removed: list[RunSpec] = field(default_factory=list)  # named by the previous space only, and on disk

    def lines(self) -> list[str]:
        out = []
        if self.added:
            out.append(f"  + {describe_runs(self.added)}: new in this space, they train now")
        if self.removed:
            out.append(f"  - {describe_runs(self.removed)}: no longer in the space; kept on disk and still reported, "
                       f"marked as outside the current space (`kdsweep report --only-current` leaves them out)")
        return out


def compare(space: Space, store: Store, legacy: dict[str, str]) -> ScopeChange:
    """How `space` differs from the space the experiment at `store` last ran (nothing, for a new experiment);
    `legacy` maps today's ids onto the experiment's kdsweep 0.1 folders (experiment.legacy_ids)."""
    recorded = (read_identity(store) or {}).get("teacher") if store.exists(SPACE) else None
    try:
        previous = load_stored_space(store, root=store.root, known_teacher=recorded or space.teacher_identity)
    except StoredSpaceProblem as err:
        # Nothing to compare with: run as the experiment's first sweep. Runs on disk are still found by their ids
        # (which encode recipe, dataset and teacher); those of another configuration are kept and listed apart.
        warnings.warn(f"{err.location} cannot be used ({err.reason}); this space "
                      f"is taken as the experiment's own: runs on disk with its runs' ids resume, and the copy is "
                      f"written again")
        return ScopeChange()
    if previous is None:
        return ScopeChange()
    teacher = recorded or previous.teacher_identity  # what its runs distilled from, whatever lies there now
    before = experiment_context(previous.file, previous.data, teacher)
    now = experiment_context(space.file, space.data, space.teacher_identity)
    change = ScopeChange(context=differences(before, now))
    if change.context:
        return change
    runs_then = expand_runs(previous.file, previous.data, teacher)  # the ids its runs have on disk
    previous = with_ids(dataclasses.replace(previous, runs=runs_then), legacy)
    named = {r.run_id for r in space.runs}
    before_ids = {r.run_id for r in previous.runs}
    on_disk = set(store.list("runs"))
    change.added = [r for r in space.runs if r.run_id not in before_ids]
    change.removed = [r for r in previous.runs if r.run_id not in named and r.run_id in on_disk]
    return change


def announce(change: ScopeChange, space: Space, store: Store, replace: bool) -> None:
    """Print what the space changes; a context change without `replace` is refused (UserError) instead."""
    if change.context and not replace:
        refuse_context_change(change, store, finished_students(space, store))
    if change.context or change.added or change.removed:
        print(f"kdsweep: this space differs from the one {store.root} last ran:")
        for line in [f"  ! {c} (--replace: earlier runs leave the tables)" for c in change.context] + change.lines():
            print(line)


def finished_students(space: Space, store: Store) -> int:
    """Finished student runs on disk, whatever space named them."""
    teacher = space.teacher.training_run.run_id if space.teacher.training_run else None
    students = [name for name in store.list("runs") if name != teacher]
    return sum(1 for r in read_records(store, students).values() if r is not None and r.finished)


def refuse_context_change(change: ScopeChange, store: Store, finished: int) -> None:
    """Raise the refusal of a context change; `finished`: the experiment's finished student runs."""
    listed = "\n".join(f"  - {line}" for line in change.context)
    raise UserError(
        f"{store.root} was run with another configuration; this space changes what every run shares, so none of "
        f"the experiment's {finished} finished run{'s' if finished != 1 else ''} would count for it:\n{listed}\n"
        f"Nothing was started. Add `--as-new-experiment NAME` to run this space as a new experiment beside it, or "
        f"`--replace` to train it in this folder (the earlier runs stay on disk but leave the tables)."
    )


def differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """'key.path: old -> new' for each leaf that differs (teacher digests shortened)."""
    out = []
    for key in dict.fromkeys([*before, *now]):
        a, b = before.get(key), now.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{path}.")
        elif a != b:
            out.append(f"{path}: {_show(key, a)} -> {_show(key, b)}")
    return out


def _show(key: str, value) -> str:
    if value is None:
        return "(none)"
    if key == CONTENT and isinstance(value, str):
        return f"sha256 {value[:12]}…"
    return str(value)


def describe_runs(runs: list[RunSpec]) -> str:
    """'8 runs (seed 2; variant simkd, multi; loss l2; lr 0.05)': the count and each axis's values among them."""
    axes = {
        "seed": [r.seed for r in runs], "variant": [r.labels.get("variant") for r in runs],
        "loss": [r.method.loss for r in runs], "lr": [f"{r.lr:g}" for r in runs],
    }
    parts = []
    for name, values in axes.items():
        distinct = list(dict.fromkeys(values))
        shown = ", ".join(str(v) for v in distinct[:_SHOWN]) + (f", +{len(distinct) - _SHOWN}" if len(distinct) > _SHOWN else "")
        parts.append(f"{name} {shown}")
    cells = len({r.labels.get("cell_id") for r in runs})
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {cells} cell{'s' if cells != 1 else ''} ({'; '.join(parts)})"
