"""Markdown rendering. The headline table keeps the seed report's columns and number formats exactly."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kdsweep.report.settings import Settings

DASH = "—"
HEADLINE_COLUMNS = (
    "Teacher Arc",
    "Student Arc",
    "Projector type",
    "Distillation Loss",
    "Learning rate (best)",
    "Test acc (best)",
    "Improvement from Baseline",
)


def _ok(x: float | None) -> bool:
    return x is not None and not pd.isna(x) and math.isfinite(float(x))


def fmt_lr(lr: float | None) -> str:
    """The shortest positional form, as the seed wrote lrs: 0.01, 0.001, 0.05, 0.1, 0.005."""
    return np.format_float_positional(float(lr), trim="-") if _ok(lr) else DASH


def fmt_acc(mean: float, std: float, n: int) -> str:
    """'75.52 ± 0.18' (two decimals, sample std); just '75.60' for a single run; a dash for none."""
    if n == 0 or not _ok(mean):
        return DASH
    if n == 1 or not _ok(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def fmt_mean_std(mean: float, std: float) -> str:
    """Like fmt_acc, taking the run count from which of mean and std exist."""
    return fmt_acc(mean, std, 2 if _ok(std) else 1)


def fmt_verdict(baseline: float | None, verdict: str | None) -> str:
    """'75.43 (yes)', '75.43 (on-par)', '75.43 (no)'; 'n/a' without a baseline number or a result."""
    if baseline is None or not isinstance(verdict, str):
        return "n/a"
    return f"{baseline:.2f} ({verdict})"


def fmt_num(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if not _ok(x):
        return DASH
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if not _ok(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(lo: float, hi: float) -> str:
    return f"[{lo:.2f}, {hi:.2f}]" if _ok(lo) and _ok(hi) else DASH


def fmt_frac(x: float | None) -> str:
    return f"{100 * x:.1f}%" if _ok(x) else DASH


def _escape(cell: object) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_acc(row: pd.Series) -> str:
    """The Test acc (best) cell: '(n=2/3)' marks an incomplete best cell, '— (running)' a row without a result yet."""
    text = fmt_acc(row["mean"], row["std"], int(row["n"]))
    if int(row["n"]) == 0:
        return f"{DASH} ({row['waiting']})" if row["waiting"] else DASH
    if int(row["n"]) < int(row["n_planned"]):
        text += f" (n={int(row['n'])}/{int(row['n_planned'])})"
    return text


def headline_markdown(head: pd.DataFrame, settings: Settings) -> str:
    rows = [
        [
            r["teacher"],
            r["student"],
            r["title"],
            r["loss_display"],
            fmt_lr(r["lr"]),
            headline_acc(r),
            fmt_verdict(settings.baseline_accuracy, r["verdict"]),
        ]
        for _, r in head.iterrows()
    ]
    return markdown_table(HEADLINE_COLUMNS, rows)


def comparison_markdown(head: pd.DataFrame, settings: Settings) -> str:
    """Each headline row against the in-sweep baseline's runs: difference of means and Welch's two-sided p."""
    rows = []
    for _, r in head.iterrows():
        if r["is_baseline"]:
            delta, p = DASH, "(baseline)"
        else:
            delta, p = fmt_num(r["delta_insweep"], 2, True), fmt_p(r["welch_p"])
        rows.append([r["title"], r["loss_display"], fmt_lr(r["lr"]), headline_acc(r), delta, p])
    header = ("Projector type", "Distillation Loss", "Learning rate (best)", "Test acc", "Δ vs in-sweep", "Welch p")
    return markdown_table(header, rows)


def cells_markdown(cells: pd.DataFrame, settings: Settings, select: str) -> str:
    """Every cell: runs by status, best- and last-epoch mean ± std, the CI of the selected one, best epoch, then
    the mean of each metric the methods measured (aggregate.cell_table puts them last)."""
    metrics = metric_names(cells)
    rows = []
    for _, c in cells.iterrows():
        rows.append(
            [
                c["title"],
                settings.display_loss(c["loss"]),
                fmt_lr(c["lr"]),
                f"{int(c['n'])}/{int(c['n_planned'])}",
                c["status"],
                fmt_mean_std(c["best_mean"], c["best_std"]),
                fmt_mean_std(c["last_mean"], c["last_std"]),
                fmt_ci(c[f"{select}_ci_low"], c[f"{select}_ci_high"]),
                fmt_num(c["best_epoch_mean"], 1),
                *(fmt_metric(name, c[name]) for name in metrics),
            ]
        )
    header = (
        "Projector type", "Loss", "lr", "n", "Status", "Best-epoch acc", "Last-epoch acc",
        f"95% CI ({select})", "Best epoch (mean)", *(metric_title(name, settings) for name in metrics),
    )  # fmt: skip
    return markdown_table(header, rows)


def metric_names(cells: pd.DataFrame) -> list[str]:
    """The metric columns of a cell table: those after the best epoch."""
    return list(cells.columns[cells.columns.get_loc("best_epoch_mean") + 1:])


def metric_title(name: str, settings: Settings) -> str:
    return settings.metric_titles.get(name, (name, ""))[0]


def fmt_metric(name: str, value: float | None) -> str:
    """Fractions (names ending in _frac) as percentages, other metrics in 4 significant digits."""
    if name.endswith("_frac"):
        return fmt_frac(value)
    return f"{value:.4g}" if _ok(value) else DASH
