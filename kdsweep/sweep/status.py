"""`kdsweep status`: what an experiment has done, from its stored records; starts nothing."""

from __future__ import annotations

import time
import warnings

from kdsweep.sweep import results, scope
from kdsweep.space import Space, load_space
from kdsweep.storage import Store
from kdsweep.sweep.experiment import StoredSpaceProblem, attach, open_experiment, other_configurations
from kdsweep.sweep.lock import ExperimentLock, is_held
from kdsweep.sweep.plan import diverged_teacher, read_records
from kdsweep.sweep.progress import epochs_since, eta_seconds, summarise


def opened(target: str) -> tuple[Space, Store]:
    """The experiment in a folder, or the one a space file's runs live in: as its own copy of the space has it, or,
    where that copy cannot be used, as the space file has it (with a warning)."""
    if not target.endswith((".yaml", ".yml")):
        return open_experiment(target)
    space = load_space(target)
    try:
        return open_experiment(space.root)
    except StoredSpaceProblem as err:
        warnings.warn(f"{err.location} cannot be used ({err.reason}); reading the experiment as {target} has it")
        store = Store(space.root)
        return attach(space, store), store


def status_text(target: str) -> str:
    space, store = opened(target)
    live = is_held(store)
    records = read_records(store, [r.run_id for r in (*space.runs, *space.outside)])
    summary = summarise(space, records, live)
    elapsed = eta = None
    if live:  # the running sweep's elapsed time and, at its rate so far, the time left
        started = (ExperimentLock(store).holder() or {}).get("started_at")
        if started:
            elapsed = time.time() - started
            eta = eta_seconds(summary, elapsed, epochs_since(records, started))
    lines = [f"{space.file.experiment} ({store.root}){' - a sweep is running' if live else ''}",
             f"  {summary.line(elapsed, eta)}"]
    if (why := diverged_teacher(store, space.teacher.training_run)) is not None:
        lines.append(f"  teacher: {why}")
    trials = results.trials_frame(space, records, live)
    for status in ("running", "failed", "diverged"):
        rows = trials[trials.status == status]
        for row in rows.itertuples():
            extra = f" at epoch {row.diverged_epoch}" if status == "diverged" else ""
            extra += f": {row.error}" if status == "failed" and row.error else ""
            lines.append(f"  {status}: {row.student_id} ({row.epochs_done}/{row.epochs} epochs){extra}")
    if space.outside:
        done = sum(1 for r in space.outside if (rec := records.get(r.run_id)) is not None and rec.finished)
        lines.append(f"  outside the current space: {scope.describe_runs(list(space.outside))}, {done} finished; "
                     f"reported beside the space's runs (`kdsweep report --only-current` leaves them out)")
    other = other_configurations(space, store)
    if other:
        lines.append(f"  {len(other)} run folder{'s' if len(other) != 1 else ''} of another configuration (an earlier "
                     f"recipe, dataset or teacher), kept on disk and not reported: {', '.join(other[:3])}"
                     + (", ..." if len(other) > 3 else ""))
    if summary.counts.get("pending") and not live and why is None:
        lines.append(f"  run `kdsweep run {store.root}` (or your space file) to continue")
    return "\n".join(lines)
