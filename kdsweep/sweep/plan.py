"""Which runs still need training, and how they are packed into student groups (one Ray trial each)."""

from __future__ import annotations

import re
from collections import defaultdict

from kdsweep.engine import FINAL_STATUSES, GroupSpec, RunRecord, RunSpec
from kdsweep.engine.record_file import read_record
from kdsweep.space import Space
from kdsweep.ids import digest
from kdsweep.storage import Store

_CHECKPOINT = re.compile(r"^epoch-(\d+)\.pt\.sha256$")


def read_records(store: Store, run_ids, repair: bool = False) -> dict[str, RunRecord | None]:
    """Each run's progress record, None for runs that never started; a damaged record is rebuilt from the run's
    checkpoint (engine/record_file.py), and with `repair` written back."""
    return {run_id: read_record(store, run_id, repair) for run_id in run_ids}


def resume_epoch(store: Store, run_id: str) -> int:
    """Epochs completed in the newest checksummed checkpoint (0 without one)."""
    found = (_CHECKPOINT.match(n) for n in store.list(f"runs/{run_id}/checkpoints"))
    return max((int(m.group(1)) for m in found if m), default=0)


def pending_runs(runs, records: dict[str, RunRecord | None]) -> list[RunSpec]:
    """Runs not completed or diverged: never started, interrupted, or failed in an earlier sweep."""
    return [r for r in runs if records.get(r.run_id) is None or records[r.run_id].status not in FINAL_STATUSES]


def teacher_maps(run: RunSpec) -> int:
    """How many teacher maps a run taps, as a rank its method declares (SimKD: none for logits-only methods, then
    the last stage, two stages, every block)."""
    return run.method.method.teacher_load(run.method.config)


def plan_groups(space: Space, runs: list[RunSpec], store: Store, max_students: int, *, teacher=True) -> list[GroupSpec]:
    """Pack runs into groups of at most `max_students` that share seed, recipe and resume epoch.

    Students that share a seed see identical batches, so they can share each teacher forward; a shared resume
    epoch keeps a group in lock-step after an interruption (runs added later start their own groups). Within a
    bucket, runs are packed in order of the teacher maps they tap (`teacher_maps`), so that the all-layer students
    (whose teacher cache, ~750 GiB in bf16, is never built) fill groups of their own instead of spoiling the cache
    of others: in the full grid each seed's groups then need 17, 17, 48, 774 and 728 GiB of bf16 cache (in the
    space's order: 17, 48, 758, 743, 17), three of them cacheable on a 141 GB card instead of two.
    """
    buckets: dict[tuple, list[RunSpec]] = defaultdict(list)
    for run in runs:
        key = (run.seed, run.recipe, resume_epoch(store, run.run_id))
        buckets[key].append(run)
    execution = space.file.execution
    threads = execution.threads or max(1, int(space.file.resources.cpu))
    groups = []
    for (seed, _, start), members in buckets.items():
        members.sort(key=teacher_maps)  # stable: the space's order within each kind
        for i in range(0, len(members), max_students):
            chunk = tuple(members[i:i + max_students])
            group_id = f"g-s{seed}-e{start}-{digest(sorted(r.run_id for r in chunk))}"
            groups.append(GroupSpec(
                group_id=group_id, seed=seed, data=space.data, teacher=space.teacher.spec if teacher else None,
                runs=chunk, storage=space.root, device=execution.device, threads=threads,
                teacher_cache=execution.teacher_cache, gpu_share=space.file.resources.gpu or None,
                # a teacher trained in the experiment is read from its final.pt by every group: always kept
                save_final=execution.save_final or not teacher,
                precision=execution.precision, channels_last=execution.channels_last, compile=execution.compile,
                fuse_students=execution.fuse_students, plugins=space.plugins,
            ))
    return groups


def diverged_teacher(store: Store, teacher_run) -> str | None:
    """Why the experiment's own teacher cannot be used - its training loss stopped being finite - or None."""
    rec = read_records(store, [teacher_run.run_id])[teacher_run.run_id] if teacher_run is not None else None
    if rec is None or rec.status != "diverged":
        return None
    return (f"the teacher {teacher_run.student_arch} diverged: its training loss was not finite in epoch "
            f"{rec.diverged_epoch} of {teacher_run.recipe.epochs} (teacher.train.lr = {teacher_run.lr:g}), so no "
            f"student can be distilled from it. Lower teacher.train.lr (or check the rest of teacher.train and the "
            f"data) and run again: a changed recipe trains a new teacher; this one stays in "
            f"runs/{teacher_run.run_id}.")
