"""results.md: the headline table first, then what a reader needs to trust it (baseline, every cell, plots,
variant knobs, provenance)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from kdsweep.report import stats
from kdsweep.report.aggregate import (
    INCOMPLETE,
    REQUIRED_COLUMNS,
    STATUS_COUNTS,
    cell_values,
    metric_columns,
    run_outcome,
)
from kdsweep.report.settings import Settings
from kdsweep.report.tables import (
    cells_markdown,
    comparison_markdown,
    fmt_acc,
    fmt_ci,
    fmt_lr,
    fmt_num,
    headline_acc,
    markdown_table,
    metric_names,
)

# trials.parquet columns that describe a run's outcome or bookkeeping; every other column is a method knob, except
# what the methods measured (`measured_columns`).
NOT_KNOBS = {
    *REQUIRED_COLUMNS, "title", "teacher", "student", "epochs", "epochs_done", "best_epoch", "teacher_acc",
    "diverged_epoch", "wall_s", "group_id", "error", "in_space",
}  # fmt: skip
ERROR_CHARS = 160  # an error's first line is cut to this in results.md
PLOTS = {
    "acc_vs_lr": "Test accuracy vs learning rate, mean ± std over seeds",
    "curves": "Test accuracy over epochs at each row's best learning rate, mean ± std band",
}


def _ok(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _kv(section: Any) -> str:
    if isinstance(section, dict):
        return ", ".join(f"{k}={v}" for k, v in section.items() if v is not None) or "—"
    return "—" if section is None else str(section)


def summary(cells: pd.DataFrame, head: pd.DataFrame, settings: Settings) -> str:
    counts = {s: int(cells[s].sum()) for s in STATUS_COUNTS if len(cells) and int(cells[s].sum())}
    runs = int(cells["n_planned"].sum()) if len(cells) else 0
    lrs = cells["lr"].nunique() if len(cells) else 0
    text = (
        f"{_count(runs, 'planned student run')} in {_count(len(cells), 'cell')} "
        f"({_count(len(head), 'variant × loss row')}, {_count(lrs, 'learning rate')}): "
        + (", ".join(f"{n} {s}" for s, n in counts.items()) or "nothing run yet")
        + "."
    )
    incomplete = int(cells[list(INCOMPLETE)].to_numpy().sum()) if len(cells) else 0
    text += " Partial sweep: incomplete cells are marked." if incomplete else ""
    done = head[head["n"] > 0] if len(head) else head
    if len(done):
        top = done.loc[done["mean"].idxmax()]
        against = ""
        if isinstance(top["verdict"], str) and settings.baseline_accuracy is not None:
            against = f"; against {settings.baseline_label}, {settings.baseline_accuracy:.2f}: {top['verdict']}"
        text += (
            f" Best row: {top['title']}, {top['loss_display']} at lr {fmt_lr(top['lr'])}: {headline_acc(top)}{against}."
        )
    return text


def selection_note(select: str, dataset: str) -> str:
    if select == "best":
        return (
            f"> **Selected on the test set.** Each run's accuracy is its best epoch's top-1 accuracy on the {dataset} "
            "test set, as in the seed report, and each row's learning rate is the one with the highest mean of those. "
            "Both choices are made on the data the numbers are scored on, which biases them upward, most for noisy "
            "cells. `kdsweep report --select last` reports last-epoch accuracy instead."
        )
    return (
        f"> Accuracies are last-epoch top-1 on the {dataset} test set. Each row's learning rate is still chosen by "
        "the highest mean on the test set, which biases the headline numbers slightly upward."
    )


def scope_note(trials: pd.DataFrame) -> str:
    """Says which reported runs the experiment's current space no longer names (a seed or an lr dropped since)."""
    outside = trials[~trials["in_space"]]
    if outside.empty:
        return ""
    seeds = ", ".join(str(s) for s in sorted(outside["seed"].unique()))
    cells = _count(outside["cell_id"].nunique(), "cell")
    return (
        f"> {_count(len(outside), 'run')} in {cells} (seed {seeds}) lie outside the experiment's current space: "
        "they were trained by an earlier space of this experiment with the same recipe, dataset and teacher, and are "
        "reported with it (marked in Status). `kdsweep report --only-current` leaves them out."
    )


def baseline_section(trials: pd.DataFrame, head: pd.DataFrame, settings: Settings, select: str) -> str:
    configured = (
        f"{settings.baseline_label}: {settings.baseline_accuracy:.2f} (the configured number; Improvement from "
        f"Baseline uses it with a tolerance of ±{settings.tolerance:g} points)."
        if settings.baseline_accuracy is not None
        else "No baseline accuracy is configured, so Improvement from Baseline reads n/a."
    )
    lines = ["## Against the baseline", "", f"- Configured: {configured}"]
    base = head[head["is_baseline"]] if len(head) else head
    if settings.baseline_variant is None:
        lines.append("- In sweep: none (the search space names no baseline variant), so there are no p-values.")
        return "\n".join(lines)
    if base.empty:
        lines.append(f"- In sweep: the baseline variant '{settings.baseline_variant}' is not in trials.parquet.")
        return "\n".join(lines)
    b = base.iloc[0]
    values = cell_values(trials, b["cell_id"], select)
    if not values:
        lines.append(f"- In sweep: {b['title']} ({b['loss_display']}) has no completed run yet.")
        return "\n".join(lines)
    lo, hi = stats.confidence_interval(values)
    diff = ""
    if settings.baseline_accuracy is not None:
        diff = f", {fmt_num(b['mean'] - settings.baseline_accuracy, 2, True)} against the configured number"
    lines.append(
        f"- In sweep: kdsweep's own {b['title']} runs ({b['loss_display']}) at their best lr {fmt_lr(b['lr'])}: "
        f"{fmt_acc(b['mean'], b['std'], int(b['n']))} (n={int(b['n'])}), 95% CI {fmt_ci(lo, hi)}{diff}."
    )
    lines += [
        "",
        comparison_markdown(head, settings),
        "",
        "Δ is the row's mean minus the in-sweep baseline's mean; p is Welch's two-sided t-test of the row's runs "
        "against the in-sweep baseline's runs (a dash when either side has fewer than two runs). No correction for "
        "multiple comparisons, and both sides were selected on the test set: read these as descriptive.",
    ]
    return "\n".join(lines)


def _first_line(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        return ""
    line = text.strip().splitlines()[0]
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def failures_section(trials: pd.DataFrame, settings: Settings, select: str) -> str:
    """Every run that is a failure (failed, diverged, completed without an accuracy, unknown status), with its error."""
    outcome = run_outcome(trials, select)
    bad = trials[outcome.isin(["failed", "diverged", "other"])]
    if bad.empty:
        return ""
    rows = []
    for i, r in bad.iterrows():
        status = r["status"]
        if status == "completed":
            why = f"completed without a finite {select}-epoch accuracy"
        elif status == "diverged" and _ok(r.get("diverged_epoch")):
            why = f"diverged at epoch {int(r['diverged_epoch'])}"
        else:
            why = _first_line(r.get("error")) or "—"
        done = f"{int(r['epochs_done'])}/{int(r['epochs'])}" if _ok(r["epochs_done"]) and _ok(r["epochs"]) else "—"
        rows.append([r["title"], settings.display_loss(r["loss"]), fmt_lr(r["lr"]), r["seed"], status, done, why])
    header = ("Projector type", "Loss", "lr", "Seed", "Status", "Epochs done", "Reason")
    return "## Failed and diverged runs\n\n" + markdown_table(header, rows)


def _knob(value: Any) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def measured_columns(trials: pd.DataFrame, settings: Settings) -> list[str]:
    """The trials columns holding what the runs' methods measured: loss parts, then metrics."""
    parts = list(settings.loss_parts) or [c for c in trials.columns if str(c).startswith("train_loss_")]
    return [c for c in parts if c in trials.columns] + metric_columns(trials, settings)


def metric_notes(cells: pd.DataFrame, settings: Settings) -> list[tuple[str, str]]:
    """(title, meaning) of each metric column of the cells table that its method explained."""
    notes = (settings.metric_titles.get(name) for name in metric_names(cells))
    return [note for note in notes if note and note[1]]


def training_section(trials: pd.DataFrame, head: pd.DataFrame, settings: Settings) -> str:
    """Each headline row's loss parts (last epoch) and metrics (mean over epochs), mean over its counted runs:
    whatever its method returned, by the names it gave them."""
    columns = [c for c in measured_columns(trials, settings) if stats.finite(trials[c])]
    if not columns or head.empty:
        return ""
    rows = []
    for _, r in head.iterrows():
        runs = trials[(trials["variant"] == r["variant"]) & (trials["loss"] == r["loss"]) & (trials["lr"] == r["lr"])
                      & (trials["status"] == "completed")]
        rows.append([r["title"], r["loss_display"], fmt_lr(r["lr"]),
                     *(f"{stats.mean(stats.finite(runs[c])):.4g}" if stats.finite(runs[c]) else "—"
                       for c in columns)])
    header = ("Variant", "Loss", "lr", *(str(c).removeprefix("train_loss_") for c in columns))
    return ("## Training losses and metrics\n\n" + markdown_table(header, rows) + "\n\nEach loss part is the "
            "weighted term the method added to the training loss, at the last epoch; each metric is the mean over "
            "epochs. Means over the completed runs of the row's cell.")


def variants_section(trials: pd.DataFrame, settings: Settings) -> str:
    """The method knobs as trials.parquet records them: those every variant shares once, then each variant's own
    (several values, joined by |, when a knob varies across a variant's cells)."""
    measured = set(measured_columns(trials, settings))
    knobs = [c for c in trials.columns if c not in NOT_KNOBS and c not in measured
             and not str(c).startswith("execution_")]
    if not knobs or trials.empty:
        return ""
    per_variant: dict[str, tuple[str, dict[str, str]]] = {}
    for variant, rows in trials.groupby("variant", sort=False):
        values = {k: " | ".join(dict.fromkeys(v for v in map(_knob, rows[k]) if v is not None)) for k in knobs}
        per_variant[variant] = (rows["title"].iloc[0], {k: v for k, v in values.items() if v})
    settings = [knobs_ for _, knobs_ in per_variant.values()]
    shared = {k: v for k, v in settings[0].items() if len(per_variant) > 1 and all(s.get(k) == v for s in settings)}
    lines = ["## Variants", ""]
    if shared:
        lines += ["Every variant: " + ", ".join(f"{k}={v}" for k, v in shared.items()) + ".", ""]
    for variant, (title, values) in per_variant.items():
        own = ", ".join(f"{k}={v}" for k, v in values.items() if k not in shared)
        lines.append(f"- **{title}** (`{variant}`): {own or 'only the shared settings'}")
    return "\n".join(lines)


def provenance_section(manifest: dict[str, Any], trials: pd.DataFrame, settings: Settings) -> str:
    teacher = manifest.get("teacher") if isinstance(manifest.get("teacher"), dict) else {}
    acc = teacher.get("test_acc")
    if not _ok(acc) and "teacher_acc" in trials:
        finite = stats.finite(trials["teacher_acc"])
        acc = finite[0] if finite else None
    arch = teacher.get("arch") or settings.teacher_arch or (trials["teacher"].iloc[0] if len(trials) else "?")
    teacher_line = f"{settings.display_teacher(arch)} (`{arch}`)"
    if teacher.get("checkpoint"):
        teacher_line += f", checkpoint `{teacher['checkpoint']}`"
    teacher_line += f", test accuracy {float(acc):.2f}%" if _ok(acc) else ", test accuracy not recorded"
    versions = ", ".join(
        f"{name} {manifest.get(key) if manifest.get(key) is not None else '—'}"
        for name, key in (("kdsweep", "kdsweep_version"), ("torch", "torch_version"), ("ray", "ray_version"),
                          ("python", "python_version"))
    )  # fmt: skip
    commit = manifest.get("git_commit")
    versions += f", git commit `{commit}`" if commit else ", git commit not recorded"
    lines = [
        "## Provenance",
        "",
        f"- Experiment: {manifest.get('experiment') or '—'}; started {manifest.get('started_at') or '—'}, "
        f"finished {manifest.get('finished_at') or 'not yet'}",
        f"- Teacher: {teacher_line}",
        f"- Dataset: {_kv(manifest.get('dataset'))}",
        f"- Recipe: {_kv(manifest.get('recipe'))}",
        f"- Versions: {versions}",
        f"- Device: {manifest.get('device') or '—'}",
    ]
    execution = execution_line(trials)
    if execution:
        lines.append(f"- Execution: {execution}")
    return "\n".join(lines)


def execution_line(trials: pd.DataFrame) -> str:
    """How the runs trained (trials' execution_* columns): each distinct setting with its run count."""
    columns = [c for c in trials.columns if str(c).startswith("execution_")]
    if not columns:
        return ""
    ran = trials[trials[columns].notna().any(axis=1)]
    if ran.empty:
        return ""
    settings = ran[columns].astype(str).agg(
        lambda row: ", ".join(f"{c.removeprefix('execution_')}={v}" for c, v in row.items()), axis=1)
    counts = settings.value_counts(sort=False)
    return "; ".join(f"{s} ({_count(int(n), 'run')})" for s, n in counts.items())


def results_markdown(
    manifest: dict[str, Any], settings: Settings, select: str, trials: pd.DataFrame, cells: pd.DataFrame,
    head: pd.DataFrame, headline: str,
) -> str:  # fmt: skip
    dataset = manifest.get("dataset")
    dataset_name = str(dataset.get("name")) if isinstance(dataset, dict) and dataset.get("name") else "dataset's"
    experiment = manifest.get("experiment") or "experiment"
    baseline = (
        f"{settings.baseline_label}, {settings.baseline_accuracy:.2f}" if settings.baseline_accuracy is not None
        else "no configured baseline"
    )  # fmt: skip
    explain = (
        f"Learning rate (best) is the lr with the highest mean {select}-epoch test accuracy for the row; Test acc "
        "(best) is that cell's mean ± sample std (ddof=1) over seeds (a single value for one run). Improvement from "
        f"Baseline compares the mean with {baseline}: yes when it is more than {settings.tolerance:g} points above, "
        f"on-par within ±{settings.tolerance:g}, no otherwise."
    )
    if len(head) and (head["n"] < head["n_planned"]).any():
        explain += " `(n=k/m)` marks a best cell with fewer counted runs than planned; see Status below."
    parts = [
        f"# Results: {experiment}",
        summary(cells, head, settings),
        "## Overview of all the experiments",
        headline,
        explain,
        scope_note(trials),
        selection_note(select, dataset_name),
        baseline_section(trials, head, settings, select),
        "## All cells\n\n"
        + cells_markdown(cells, settings, select)
        + "\n\nn counts completed runs with a finite accuracy; failed and diverged runs (and completed runs without "
        "an accuracy) are failures, excluded from mean ± std but counted in Status."
        + "".join(f" {title} is {meaning}." for title, meaning in metric_notes(cells, settings)),
        failures_section(trials, settings, select),
        "## Plots\n\n" + "\n\n".join(f"![{alt}](plots/{name}.png)" for name, alt in PLOTS.items()),
        training_section(trials, head, settings),
        variants_section(trials, settings),
        provenance_section(manifest, trials, settings),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
