"""Trials -> the cell table (one row per variant x loss x lr) and the headline rows (one per variant x loss).

A run counts towards a cell's mean and std only if its status is `completed` and its selected accuracy is finite.
Everything else is still counted, by status: `failed` and `diverged` are failures (a completed run without a finite
accuracy is a failure too), `running` and `pending` are incomplete, and `missing` is a seed named in the manifest for
which trials.parquet has no row at all.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kdsweep.errors import UserError
from kdsweep.report import stats
from kdsweep.report.settings import Settings, check_select

REQUIRED_COLUMNS = ("student_id", "cell_id", "variant", "loss", "lr", "seed", "status", "best_acc", "last_acc")
KNOWN_STATUSES = ("completed", "running", "pending", "failed", "diverged")
STATUS_COUNTS = (*KNOWN_STATUSES, "missing", "other")  # columns of the cell table, in this order
INCOMPLETE = ("running", "pending", "missing")
VERDICT_EPS = 1e-9  # keeps a mean exactly tol away from the baseline on the on-par side despite float rounding


def prepare_trials(trials: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """A typed copy of trials.parquet's table; fills optional columns. Raises UserError for missing required ones."""
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if missing:
        raise UserError(
            f"trials.parquet lacks the column(s) {', '.join(missing)}; it is written by `kdsweep run`, "
            "so rerun or resume the sweep with this version of kdsweep"
        )
    t = trials.copy().reset_index(drop=True)
    for col in ("student_id", "cell_id", "variant", "loss"):
        t[col] = t[col].astype(str)
    t["status"] = t["status"].astype(str).str.strip().str.lower()
    for col in ("lr", "best_acc", "last_acc", "best_epoch", "epochs", "epochs_done", "teacher_acc",
                *metric_columns(trials, settings)):
        if col in t.columns:
            t[col] = pd.to_numeric(t[col], errors="coerce").astype("float64")
        else:
            t[col] = np.nan
    given = t["title"] if "title" in t.columns else pd.Series([None] * len(t), dtype=object)
    t["title"] = [
        str(title) if isinstance(title, str) and title else settings.variant_titles.get(variant, variant)
        for title, variant in zip(given, t["variant"])
    ]
    # Runs on disk that the experiment's current space no longer names (sweep/experiment.py); older tables lack it.
    t["in_space"] = t["in_space"].fillna(True).astype(bool) if "in_space" in t.columns else True
    for col, fallback in (("teacher", settings.teacher_arch), ("student", settings.student_arch)):
        if col not in t.columns:
            t[col] = fallback
        t[col] = t[col].where(t[col].notna(), fallback or "?").astype(str)
    return t


def metric_columns(trials: pd.DataFrame, settings: Settings) -> list[str]:
    """The trials columns of the methods' metrics (mean over epochs), by the names the methods gave them; read off
    the columns for tables without a manifest (kdsweep 0.1's only metric was the gate's masked_frac)."""
    names = settings.metrics or ("masked_frac",)
    return [c for c in names if c in trials.columns]


def acc_column(select: str) -> str:
    return f"{check_select(select)}_acc"


def counted(trials: pd.DataFrame, select: str) -> pd.Series:
    """Runs that enter means and stds: completed with a finite selected accuracy."""
    acc = trials[acc_column(select)]
    return (trials["status"] == "completed") & np.isfinite(acc)


def run_outcome(trials: pd.DataFrame, select: str) -> pd.Series:
    """Each run's status for counting: completed-without-accuracy becomes failed, unknown statuses become other."""
    out = trials["status"].where(trials["status"].isin(KNOWN_STATUSES), "other")
    return out.mask((out == "completed") & ~counted(trials, select), "failed")


def _rank(values: pd.Series, preferred: tuple[str, ...]) -> dict[str, int]:
    """Position of each value: the manifest's order first, then first appearance in the table."""
    order = [v for v in preferred if v in set(values)]
    order += [v for v in pd.unique(values) if v not in order]
    return {v: i for i, v in enumerate(order)}


def order_cells(trials: pd.DataFrame, settings: Settings) -> list[str]:
    """Cell ids in the space's order: variant, then loss, then first appearance (the sweep writes lrs in order)."""
    first = trials.drop_duplicates("cell_id")
    vrank = _rank(first["variant"], settings.variant_order)
    lrank = _rank(first["loss"], settings.loss_order)
    keyed = sorted(
        enumerate(first.itertuples(index=False)), key=lambda p: (vrank[p[1].variant], lrank[p[1].loss], p[0])
    )
    return [row.cell_id for _, row in keyed]


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    lo, hi = stats.confidence_interval(values)
    return stats.mean(values), stats.sample_std(values), lo, hi


def cell_table(trials: pd.DataFrame, settings: Settings, select: str = "best") -> pd.DataFrame:
    """One row per cell with run counts by status and mean/std/95% CI of best- and last-epoch accuracy."""
    check_select(select)
    outcome = run_outcome(trials, select)
    use = counted(trials, select)
    metrics = metric_columns(trials, settings)
    rows = []
    for cell_id in order_cells(trials, settings):
        in_cell = trials["cell_id"] == cell_id
        cell = trials[in_cell]
        first = cell.iloc[0]
        counts = outcome[in_cell].value_counts()
        outside = int((~cell["in_space"]).sum())  # runs outside the current space: reported, planned by none
        planned = settings.runs_per_cell.get(cell_id) or (len(settings.seeds) if outside < len(cell) else 0)
        n_planned = max(len(cell), planned + outside)
        row = {
            "variant": first["variant"],
            "title": first["title"],
            "loss": first["loss"],
            "lr": float(first["lr"]),
            "cell_id": cell_id,
            "teacher": first["teacher"],
            "student": first["student"],
            "n": int(use[in_cell].sum()),
            "n_planned": n_planned,
            "outside": outside,
        }
        for status in STATUS_COUNTS:
            row[status] = int(counts.get(status, 0))
        row["missing"] = n_planned - len(cell)
        for metric in ("best", "last"):
            done = cell[(cell["status"] == "completed")][f"{metric}_acc"]
            m, s, lo, hi = _stats(stats.finite(done))
            row.update({f"{metric}_mean": m, f"{metric}_std": s, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
        chosen = cell[use[in_cell]]
        row["best_epoch_mean"] = stats.mean(stats.finite(chosen["best_epoch"]))
        for name in metrics:
            row[name] = stats.mean(stats.finite(chosen[name]))
        row["status"] = status_text(row)
        rows.append(row)
    columns = [
        "variant", "title", "loss", "lr", "cell_id", "teacher", "student", "n", "n_planned", "outside",
        *STATUS_COUNTS, "status", "best_mean", "best_std", "best_ci_low", "best_ci_high", "last_mean", "last_std", "last_ci_low",
        "last_ci_high", "best_epoch_mean", *metrics,
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def status_text(row: dict) -> str:
    """'complete', or what is missing: 'n=2/3: 1 running', 'n=1/3: 1 failed, 1 diverged'; then how many of the
    cell's runs lie outside the current space, if any."""
    if row["n"] == row["n_planned"]:
        text = "complete"
    else:
        parts = [f"{row[s]} {s}" for s in STATUS_COUNTS if s != "completed" and row[s]]
        text = f"n={row['n']}/{row['n_planned']}" + (f": {', '.join(parts)}" if parts else "")
    outside = row.get("outside", 0)
    if outside:  # all of the cell's rows in trials.parquet, or some of them
        every = outside == row["n_planned"] - row["missing"]
        text += "; outside the current space" if every else f"; {outside} outside the current space"
    return text


def verdict(mean: float, baseline: float | None, tolerance: float) -> str | None:
    """'yes' when mean - baseline > tol, 'on-par' when |mean - baseline| <= tol, 'no' otherwise."""
    if baseline is None or not math.isfinite(mean):
        return None
    diff = mean - baseline
    if diff > tolerance + VERDICT_EPS:
        return "yes"
    if abs(diff) <= tolerance + VERDICT_EPS:
        return "on-par"
    return "no"


def cell_values(trials: pd.DataFrame, cell_id: str | None, select: str) -> list[float]:
    """The selected accuracies of a cell's counted runs."""
    if cell_id is None:
        return []
    keep = counted(trials, select) & (trials["cell_id"] == cell_id)
    return [float(x) for x in trials.loc[keep, acc_column(select)]]


def headline_rows(trials: pd.DataFrame, cells: pd.DataFrame, settings: Settings, select: str = "best") -> pd.DataFrame:
    """One row per (variant, loss) in the cells' order, at the lr with the highest mean (ties: the smaller lr).

    Adds the verdict against the configured baseline and Welch's test against the in-sweep baseline's runs.
    """
    check_select(select)
    rows = []
    for (variant, loss), group in cells.groupby(["variant", "loss"], sort=False):
        done = group[group["n"] > 0]
        best = done.sort_values([f"{select}_mean", "lr"], ascending=[False, True], kind="stable").head(1)
        first = group.iloc[0]
        row = {
            "variant": variant,
            "title": first["title"],
            "loss": loss,
            "loss_display": settings.display_loss(loss),
            "teacher": settings.display_teacher(first["teacher"]),
            "student": settings.display_student(first["student"]),
            "lr": math.nan,
            "cell_id": None,
            "n": 0,
            "n_planned": int(first["n_planned"]),
            "mean": math.nan,
            "std": math.nan,
            "waiting": next((s for s in INCOMPLETE if group[s].sum() > 0), ""),  # why a row may still change
        }
        if len(best):
            b = best.iloc[0]
            row.update(
                lr=float(b["lr"]), cell_id=b["cell_id"], n=int(b["n"]), n_planned=int(b["n_planned"]),
                mean=float(b[f"{select}_mean"]), std=float(b[f"{select}_std"]),
            )  # fmt: skip
        row["verdict"] = verdict(row["mean"], settings.baseline_accuracy, settings.tolerance)
        rows.append(row)
    head = pd.DataFrame(rows)
    if head.empty:
        return head
    base = baseline_index(head, settings)
    base_values = cell_values(trials, head.loc[base, "cell_id"], select) if base is not None else []
    welch = [stats.welch_t_test(cell_values(trials, c, select), base_values) for c in head["cell_id"]]
    head["is_baseline"] = [i == base for i in head.index]
    base_mean = head.loc[base, "mean"] if base is not None else math.nan
    head["delta_insweep"] = head["mean"] - base_mean
    head["welch_t"] = [w.t for w in welch]
    head["welch_df"] = [w.df for w in welch]
    head["welch_p"] = [math.nan if is_base else w.p for w, is_base in zip(welch, head["is_baseline"])]
    return head


def baseline_index(head: pd.DataFrame, settings: Settings) -> int | None:
    """The headline row of the in-sweep baseline: the baseline variant with its configured loss, else l2, else first."""
    if settings.baseline_variant is None:
        return None
    rows = head[head["variant"] == str(settings.baseline_variant)]
    if rows.empty:
        return None
    for loss in (settings.baseline_loss, "l2"):
        if loss is not None and (rows["loss"] == loss).any():
            return int(rows.index[rows["loss"] == loss][0])
    return int(rows.index[0])
