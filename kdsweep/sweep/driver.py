"""`kdsweep run`: lock the experiment, train the teacher if needed, run the pending student groups through Ray
Tune, keep the result tables current, and write the report. Ray is imported only when there is work for it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kdsweep.engine import FINAL_STATUSES
from kdsweep.engine.student import final_problem
from kdsweep.errors import UserError
from kdsweep.space import Space
from kdsweep.storage import Store
from kdsweep.sweep import results, scope
from kdsweep.sweep.experiment import attach, legacy_ids, record_identity
from kdsweep.sweep.lock import ExperimentLock
from kdsweep.sweep.plan import diverged_teacher, pending_runs, plan_groups, read_records
from kdsweep.sweep.preflight import preflight
from kdsweep.sweep.report_command import build_report_in
from kdsweep.sweep.progress import ProgressPrinter

EXPORT_EVERY_S = 10.0  # re-export the tables at most this often during a sweep


@dataclass
class SweepOutcome:
    root: str
    failed: list[tuple[str, str]]  # (group id, error) of trials that failed for good
    trials: object  # pandas DataFrame of trials.parquet
    interrupted: bool = False  # stopped early (Ctrl-C): run again to resume


def run_sweep(space: Space, address: str | None = None, report: bool = True, *, replace: bool = False,
              only_current: bool = False, verbose: bool = False) -> SweepOutcome:
    """`replace`: accept a space that changes what every run shares (scope.py); `only_current`: the final report
    leaves out runs outside the space; `verbose`: Ray Tune's own tables and messages too."""
    store = Store(space.root)
    refuse_storage_in_job_copy(store)
    preflight(space, address)
    with ExperimentLock(store):
        legacy = legacy_ids(space, store)
        space = attach(space, store, legacy)  # the experiment's 0.1 run folders, and its runs outside the space
        scope.announce(scope.compare(space, store, legacy), space, store, replace)  # or refuse, before training
        # While it holds the lock, this run alone writes the experiment's tables (`kdsweep report` does not
        # export during a sweep): what an earlier driver killed mid-write left behind can go.
        for folder in ("", "plots"):
            store.delete_unfinished_writes(folder)
        return _run_locked(space, store, address, report, only_current, legacy, verbose)


def refuse_storage_in_job_copy(store: Store) -> None:
    """Inside a Ray job that shipped a working directory (`kdsweep submit`, `ray job submit --working-dir`), a
    relative `storage` lands in the job's temporary copy of that directory on the head node: other nodes cannot see
    it and Ray deletes it. Refuse it before anything starts."""
    from kdsweep.cluster import SHARED_STORAGE_HINT, job_runtime_env  # no Ray import: constants and os.environ

    local = store.local_path()
    if local is None or "working_dir" not in job_runtime_env():
        return
    if local.resolve().is_relative_to(Path.cwd().resolve()):  # the job runs in its copy of the working directory
        raise UserError(f"storage {store.root} is inside this Ray job's temporary working directory on the head "
                        f"node, which other nodes cannot see and Ray deletes: {SHARED_STORAGE_HINT}.")


def _run_locked(space: Space, store: Store, address: str | None, report: bool, only_current: bool,
                legacy: dict[str, str], verbose: bool) -> SweepOutcome:
    from kdsweep import tune as kd_tune  # the only Ray import, deferred so that validation never starts Ray

    f = space.file
    resources = kd_tune.Resources(f.resources.cpu, f.resources.gpu)
    where = kd_tune.connect(address, resources, verbose=verbose)
    try:
        import ray

        if kd_tune.node_count() > 1:
            kd_tune.verify_shared_storage(store)
        records = read_records(store, [r.run_id for r in space.runs], repair=True)  # this driver holds the lock
        todo = pending_runs(space.runs, records)
        kept = set(legacy.values())
        record_identity(space, store, [r for r in space.runs if r.run_id in kept] + todo, legacy)
        results.write_space_and_manifest(space, store, device=_device_summary(where, resources),
                                         ray_version=ray.__version__)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        failed: list[tuple[str, str]] = []
        teacher_run = space.teacher.training_run
        _refuse_a_diverged_teacher(store, teacher_run)  # the same recipe would diverge the same way again
        if teacher_run is not None and not _teacher_ready(store, teacher_run):
            if _finished(store, teacher_run.run_id):
                print(f"kdsweep: the teacher's {store.location(f'runs/{teacher_run.run_id}/final.pt')} "
                      f"{final_problem(store, f'runs/{teacher_run.run_id}')}: writing it again from its checkpoints")
            else:
                n = teacher_run.recipe.epochs
                print(f"kdsweep: training the teacher {teacher_run.student_arch} ({n} epoch{'s' if n != 1 else ''})")
            teacher_group = plan_groups(space, [teacher_run], store, 1, teacher=False)
            failed += kd_tune.run_groups(teacher_group, resources=resources, storage_path=store.location("tune"),
                                         name=f"teacher-{stamp}", max_failures=f.execution.max_failures,
                                         on_result=lambda result: None)
            if failed:
                raise UserError(
                    f"training the teacher failed ({failed[0][1]}); its checkpoints are kept under "
                    f"{store.location(f'runs/{teacher_run.run_id}')}. Run again to retry from them."
                )
            _refuse_a_diverged_teacher(store, teacher_run)
            if not _teacher_ready(store, teacher_run):  # Ctrl-C: Tune stopped the trial and returned
                return _stop(space, store, failed, interrupted=True)
        done = len(space.runs) - len(todo)
        groups = plan_groups(space, todo, store, f.group.max_students)
        print(f"kdsweep: {space.file.experiment}: {len(space.runs)} runs, {done} already finished, "
              f"{len(todo)} to train in {len(groups)} group{'s' if len(groups) != 1 else ''} ({where})")
        if groups:
            progress = ProgressPrinter(space, store, EXPORT_EVERY_S)
            failed += kd_tune.run_groups(groups, resources=resources, storage_path=store.location("tune"),
                                         name=f"students-{stamp}", max_failures=f.execution.max_failures,
                                         on_result=progress.on_result)
            mark_failed_runs(space, store, groups, failed)
        outcome = _stop(space, store, failed, interrupted=_unfinished(store, groups, failed))
    finally:
        kd_tune.shutdown()
    if report:
        rep = build_report_in(store, only_current=only_current)
        print(rep.headline_markdown)
        print(f"kdsweep: report written to {store.location('results.md')}")
    return outcome


def _stop(space: Space, store: Store, failed, interrupted: bool) -> SweepOutcome:
    """Final export; the manifest's end time only when the sweep ran to its end."""
    trials = results.export(space, store, live=False)
    if not interrupted:
        results.mark_finished(store)
    return SweepOutcome(store.root, failed, trials, interrupted)


def _unfinished(store: Store, groups, failed) -> bool:
    """True when Tune returned with runs of groups that did not fail still unfinished (it was interrupted)."""
    failed_ids = {group_id for group_id, _ in failed}
    runs = [r for g in groups if g.group_id not in failed_ids for r in g.runs]
    return bool(pending_runs(runs, read_records(store, [r.run_id for r in runs])))


def mark_failed_runs(space: Space, store: Store, groups, failed: list[tuple[str, str]]) -> None:
    """Runs of groups that failed for good (after Tune's retries) are recorded as failed, with the error."""
    by_id = {g.group_id: g for g in groups}
    for group_id, error in failed:
        group = by_id.get(group_id)
        if group is None:
            continue
        records = read_records(store, [r.run_id for r in group.runs])
        for run in group.runs:
            rec = records[run.run_id]
            if rec is not None and rec.status in FINAL_STATUSES:
                continue
            from kdsweep.engine import RunRecord

            rec = rec or RunRecord(run_id=run.run_id, group_id=group_id, epochs=run.recipe.epochs)
            rec.status, rec.error = "failed", error
            store.write_json(f"runs/{run.run_id}/progress.json", rec.to_dict())
        print(f"kdsweep: group {group_id} failed: {error}", file=sys.stderr)


def _refuse_a_diverged_teacher(store: Store, teacher_run) -> None:
    if (why := diverged_teacher(store, teacher_run)) is not None:
        raise UserError(why)


def _teacher_ready(store: Store, teacher_run) -> bool:
    """The experiment's teacher is trained and its final.pt verifies; when that file is damaged, its group (run
    again) writes it anew from the teacher's final checkpoint, or trains the teacher again."""
    return _finished(store, teacher_run.run_id) and final_problem(store, f"runs/{teacher_run.run_id}") is None


def _finished(store: Store, run_id: str) -> bool:
    rec = read_records(store, [run_id])[run_id]
    return rec is not None and rec.status == "completed"


def _device_summary(where: str, resources) -> str:
    kind = f"{resources.gpu:g} GPU" if resources.gpu else "CPU"
    return f"{where}; per trial {resources.cpu:g} CPU + {kind}"
