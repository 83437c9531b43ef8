"""Sweep progress: counts of students done / running / pending, elapsed time and ETA.

The same summary serves the live line printed during `kdsweep run` and `kdsweep status`, and both are computed
from the stored progress records, never from Ray's state.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from kdsweep.engine import RunRecord
from kdsweep.space import Space
from kdsweep.storage import Store
from kdsweep.sweep import results
from kdsweep.sweep.plan import read_records


@dataclass
class Summary:
    total: int
    counts: dict[str, int]  # status -> number of runs
    epochs_done: int  # student-epochs finished, all runs
    epochs_total: int

    def line(self, elapsed_s: float | None = None, eta_s: float | None = None) -> str:
        c = self.counts
        parts = [f"{c.get('completed', 0)}/{self.total} students done", f"{c.get('running', 0)} running",
                 f"{c.get('pending', 0)} pending"]
        for status in ("diverged", "failed"):
            if c.get(status):
                parts.append(f"{c[status]} {status}")
        parts.append(f"{self.epochs_done}/{self.epochs_total} student-epochs")
        if elapsed_s is not None:
            parts.append(f"elapsed {format_duration(elapsed_s)}")
        if eta_s is not None:
            parts.append(f"ETA {format_duration(eta_s)}")
        return ", ".join(parts)


def summarise(space: Space, records: dict[str, RunRecord | None], live: bool) -> Summary:
    counts: dict[str, int] = {}
    done = 0
    for run in space.runs:
        rec = records.get(run.run_id)
        status = "pending" if rec is None else rec.status
        if status == "running" and not live:
            status = "pending"
        counts[status] = counts.get(status, 0) + 1
        done += rec.epochs_done if rec else 0
    return Summary(len(space.runs), counts, done, sum(r.recipe.epochs for r in space.runs))


def eta_seconds(summary: Summary, elapsed_s: float, epochs_gained: int) -> float | None:
    """Time left at the rate this sweep has worked so far (student-epochs gained over elapsed seconds)."""
    if epochs_gained <= 0 or elapsed_s <= 0:
        return None
    return (summary.epochs_total - summary.epochs_done) * elapsed_s / epochs_gained


def epochs_since(records: dict[str, RunRecord | None], since: float) -> int:
    """Student-epochs that finished at or after `since` (unix seconds), from the records' histories."""
    return sum(1 for rec in records.values() if rec for e in rec.history if e.get("finished_at", 0) >= since)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressPrinter:
    """Called on every trial result; prints a summary line and re-exports the tables, at most every `every_s`."""

    def __init__(self, space: Space, store: Store, every_s: float):
        self.space, self.store, self.every_s = space, store, every_s
        self.started = time.time()  # the rate counts only the epochs this sweep finished (`epochs_since`)
        self.last = 0.0

    def on_result(self, result: dict) -> None:
        now = time.time()
        if now - self.last < self.every_s:
            return
        self.last = now
        records = read_records(self.store, [r.run_id for r in self.space.runs])
        summary = summarise(self.space, records, live=True)
        elapsed = now - self.started
        eta = eta_seconds(summary, elapsed, epochs_since(records, self.started))
        print(f"kdsweep: {summary.line(elapsed, eta)}", file=sys.stderr, flush=True)
        results.export(self.space, self.store, live=True)
