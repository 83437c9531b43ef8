"""What the report needs from `manifest.json`: baseline, display names, orders. Every key is optional."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kdsweep.errors import UserError

SELECTS = ("best", "last")

# The seed report's display names; the manifest's `report` section overrides or extends them.
DEFAULT_LOSS_DISPLAY = {"l2": "L2 loss", "kl": "KL divergence", "kl_raw": "KL divergence (raw features)"}
DEFAULT_ARCH_DISPLAY = {"MobileNetV2_1_0": "MobileNetV2x2"}
LEGACY_METRIC_TITLES = {"masked_frac": ("Masked (gated)", "the mean fraction of samples the teacher-correct gate "
                                                           "removed (gated variants only)")}
DEFAULT_TOLERANCE = 0.05  # accuracy points within which a row is "on-par" with the baseline


@dataclass(frozen=True)
class Settings:
    baseline_label: str = "baseline"
    baseline_accuracy: float | None = None
    baseline_variant: str | None = None
    baseline_loss: str | None = None  # the baseline variant's loss to compare against; None: l2, else its first
    tolerance: float = DEFAULT_TOLERANCE
    teacher_display: dict[str, str] | str | None = None
    student_display: dict[str, str] | str | None = None
    loss_display: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LOSS_DISPLAY))
    variant_titles: dict[str, str] = field(default_factory=dict)
    variant_order: tuple[str, ...] = ()
    loss_order: tuple[str, ...] = ()
    seeds: tuple[Any, ...] = ()
    # Runs the space planned per cell (its seeds after include/exclude); a cell with fewer rows is missing some.
    # Without it (tables from elsewhere) a cell is expected to have a run for every seed.
    runs_per_cell: dict[str, int] = field(default_factory=dict)
    select: str = "best"
    # What the runs' methods measured (sweep/results.py): trials columns train_loss_<part> (the last epoch's) and
    # metrics by name (mean over epochs). Empty for tables from elsewhere: then read off the columns.
    loss_parts: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    # metric -> (column title, what it means) for the cells table; manifests of kdsweep before 0.2 lack it, and
    # their one metric was SimKD's gate.
    metric_titles: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(LEGACY_METRIC_TITLES))
    teacher_arch: str | None = None  # fallbacks when trials.parquet lacks the teacher / student columns
    student_arch: str | None = None

    def display_loss(self, loss: str) -> str:
        return self.loss_display.get(loss, loss)

    def display_teacher(self, arch: str) -> str:
        return _display(arch, self.teacher_display)

    def display_student(self, arch: str) -> str:
        return _display(arch, self.student_display)


def _display(arch: str, configured: dict[str, str] | str | None) -> str:
    if isinstance(configured, str):
        return configured
    if isinstance(configured, dict) and arch in configured:
        return str(configured[arch])
    return DEFAULT_ARCH_DISPLAY.get(arch, arch)


def _float_or_none(value: Any, key: str) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UserError(f"manifest.json: report.{key} must be a number or null, not {value!r}") from None
    return out if math.isfinite(out) else None


def check_select(select: str) -> str:
    if select not in SELECTS:
        raise UserError(f"unknown accuracy selection '{select}'; known: {', '.join(SELECTS)}")
    return select


def settings_from_manifest(manifest: dict[str, Any]) -> Settings:
    """Read the manifest's `report` section, tolerating any missing key."""
    report = manifest.get("report") or {}
    if not isinstance(report, dict):
        raise UserError("manifest.json: `report` must be a mapping")
    baseline = report.get("baseline") or {}
    variants = report.get("variants") or []
    titles: dict[str, str] = {}
    order: list[str] = []
    for v in variants:
        if isinstance(v, dict) and v.get("name") is not None:
            order.append(str(v["name"]))
            if v.get("title"):
                titles[str(v["name"])] = str(v["title"])
        elif isinstance(v, str):
            order.append(v)
    loss_display = dict(DEFAULT_LOSS_DISPLAY)
    loss_display.update({str(k): str(v) for k, v in (report.get("loss_display") or {}).items()})
    tolerance = _float_or_none(baseline.get("tolerance"), "baseline.tolerance")
    return Settings(
        baseline_label=str(baseline.get("label") or "baseline"),
        baseline_accuracy=_float_or_none(baseline.get("accuracy"), "baseline.accuracy"),
        baseline_variant=baseline.get("variant") or None,
        baseline_loss=baseline.get("loss") or None,
        tolerance=DEFAULT_TOLERANCE if tolerance is None else abs(tolerance),
        teacher_display=report.get("teacher_display"),
        student_display=report.get("student_display"),
        loss_display=loss_display,
        variant_titles=titles,
        variant_order=tuple(order),
        loss_order=tuple(str(x) for x in (report.get("losses") or [])),
        seeds=tuple(report.get("seeds") or ()),
        runs_per_cell={str(k): int(v) for k, v in (report.get("runs_per_cell") or {}).items()},
        select=str(report.get("select") or "best"),
        loss_parts=tuple(str(x) for x in (report.get("loss_parts") or ())),
        metrics=tuple(str(x) for x in (report.get("metrics") or ())),
        metric_titles=_metric_titles(report.get("metric_titles")),
        teacher_arch=_arch(manifest.get("teacher")),
        student_arch=_arch(manifest.get("student")),
    )


def _metric_titles(given: Any) -> dict[str, tuple[str, str]]:
    if not isinstance(given, dict):
        return dict(LEGACY_METRIC_TITLES)
    return {str(k): (str(v[0]), str(v[1])) for k, v in given.items() if isinstance(v, (list, tuple)) and len(v) == 2}


def _arch(section: Any) -> str | None:
    if isinstance(section, dict) and section.get("arch"):
        return str(section["arch"])
    return section if isinstance(section, str) else None
