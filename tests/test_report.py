"""kdsweep.report: golden headline rows from the seed report's per-run values, aggregation edge cases, statistics
against scipy, export, and the experiment folder round trip (real parquet, real PNG)."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from kdsweep.errors import UserError
from kdsweep.report import build_report, cells_csv, cells_json, write_report
from kdsweep.report.aggregate import verdict
from kdsweep.report.stats import confidence_interval, t_cdf, t_ppf, t_sf, welch_t_test
from kdsweep.report.tables import fmt_acc, fmt_lr
from kdsweep.methods import parse_method
from kdsweep.engine import RunRecord
from kdsweep.space import load_space
from kdsweep.storage import Store
from kdsweep.sweep.results import _knob_value, export, write_space_and_manifest
from helpers import save_teacher, tiny_space, write_space

TITLES = {
    "simkd": "SimKD",
    "multi": "Multiple projector (bias)",
    "all_layers": "All layers projector (unbiased)",
    "labels": "Using ground truth labels",
}
# The knob columns kdsweep writes for each variant (sweep/results.py: real method records, not hand-made values).
VARIANT_METHODS = {
    "simkd": {"taps": "last"},
    "multi": {"taps": "multi"},
    "all_layers": {"taps": "all_blocks"},
    "labels": {"taps": "last", "gate": "teacher_correct"},
}
KNOBS = {variant: {k: _knob_value(v) for k, v in parse_method(knobs).as_record().items() if k != "loss"}
         for variant, knobs in VARIANT_METHODS.items()}
HEADER = (
    "| Teacher Arc | Student Arc | Projector type | Distillation Loss | Learning rate (best) | Test acc (best) "
    "| Improvement from Baseline |"
)


def manifest(**report_overrides) -> dict:
    report = {
        "baseline": {"label": "SimKD (paper)", "accuracy": 75.43, "variant": "simkd", "tolerance": 0.05},
        "teacher_display": "resnet32x4",
        "student_display": "MobileNetV2x2",
        "loss_display": {"l2": "L2 loss", "kl": "KL divergence", "kl_raw": "KL divergence (raw features)"},
        "select": "best",
        "variants": [{"name": k, "title": v} for k, v in TITLES.items()],
        "losses": ["l2", "kl"],
        "seeds": [0, 1, 2],
    }
    report.update(report_overrides)
    return {
        "experiment": "golden",
        "kdsweep_version": "0.1.0",
        "torch_version": "2.14.1",
        "ray_version": None,
        "python_version": "3.12.3",
        "git_commit": None,
        "device": "cpu",
        "started_at": "2025-01-01T00:00:00",
        "finished_at": None,
        "dataset": {"name": "cifar100", "root": "/data"},
        "recipe": {"epochs": 240, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4,
                   "milestones": [150, 180, 210], "gamma": 0.1},  # fmt: skip
        "teacher": {"arch": "resnet32x4", "checkpoint": "resnet32x4.pth", "test_acc": 79.42},
        "report": report,
    }


def trial(variant, loss, lr, seed, best, last=None, status="completed", masked=None, epochs=240) -> dict:
    """One trials.parquet row with every column the sweep writes, plus its knobs and an unknown extra column."""
    finished = status == "completed" and best is not None and math.isfinite(best)
    cell_id = f"{variant}-{loss}-{lr:g}"
    return {
        "student_id": f"{cell_id}-s{seed}",
        "cell_id": cell_id,
        "variant": variant,
        "title": TITLES[variant],
        "loss": loss,
        "lr": float(lr),
        "seed": int(seed),
        "teacher": "resnet32x4",
        "student": "MobileNetV2_1_0",
        "status": status,
        "epochs": epochs,
        "epochs_done": epochs if finished else epochs // 2,
        "best_acc": np.nan if best is None else float(best),
        "best_epoch": 230 if finished else None,
        "last_acc": (np.nan if best is None else float(best) - 0.2) if last is None else float(last),
        "teacher_acc": 79.42,
        "masked_frac": np.nan if masked is None else masked,
        "diverged_epoch": 60 if status == "diverged" else None,
        "wall_s": 3600.0,
        "group_id": f"g-{lr:g}",
        "error": "RuntimeError: CUDA out of memory\nTraceback ..." if status == "failed" else None,
        "some_future_column": "ignored",
        **KNOBS[variant],
    }


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in ("best_epoch", "diverged_epoch"):
        df[col] = df[col].astype("Int64")
    return df


# Per-run best-epoch accuracies. The seed report's own values where it has them (docs/seed-study-runs.md, "What
# tests/test_report.py relies on"), others chosen to reproduce the seed's printed mean ± std (66.88 ± 3.78,
# 53.23 ± 0.38, 72.6 ± 0.41, 66.87 ± 3.78).
GOLDEN_RUNS = {
    ("simkd", "l2"): {0.001: [20.10, 19.80, 20.40], 0.01: [75.51, 75.50, 75.40], 0.05: [74.90, 74.60, 74.80]},
    ("simkd", "kl"): {0.001: [15.00, 16.00, 15.50], 0.01: [69.90, 70.00, 69.80], 0.05: [70.10, 70.40, 70.25]},
    ("multi", "l2"): {0.001: [18.36, 18.10, 18.50], 0.01: [75.60, 75.64, 75.31], 0.05: [73.55, 74.27, 74.15]},
    ("multi", "kl"): {0.001: [10.00, 11.00, 12.00], 0.01: [62.55, 69.50, 68.59], 0.05: [60.00, 61.00, 62.00]},
    ("all_layers", "l2"): {0.001: [9.00, 9.50, 9.20], 0.01: [52.85, 53.23, 53.61], 0.05: [50.10, 50.00, 49.90]},
    ("all_layers", "kl"): {0.001: [30.00, 31.00, 32.00], 0.01: [72.19, 72.60, 73.01], 0.05: [70.00, 70.50, 71.00]},
    ("labels", "l2"): {0.001: [18.00, 18.20, 18.40], 0.01: [75.29, 75.94, 75.00], 0.05: [73.00, 73.50, 74.00]},
    ("labels", "kl"): {0.001: [10.50, 11.50, 12.50], 0.01: [62.54, 69.49, 68.58], 0.05: [60.50, 61.50, 62.50]},
}
LAST_MULTI_L2 = [75.49, 75.37, 74.96]  # the seed's last-epoch values at lr 0.01

GOLDEN_HEADLINE = [
    "| resnet32x4 | MobileNetV2x2 | SimKD | L2 loss | 0.01 | 75.47 ± 0.06 | 75.43 (on-par) |",
    "| resnet32x4 | MobileNetV2x2 | SimKD | KL divergence | 0.05 | 70.25 ± 0.15 | 75.43 (no) |",
    "| resnet32x4 | MobileNetV2x2 | Multiple projector (bias) | L2 loss | 0.01 | 75.52 ± 0.18 | 75.43 (yes) |",
    "| resnet32x4 | MobileNetV2x2 | Multiple projector (bias) | KL divergence | 0.01 | 66.88 ± 3.78 | 75.43 (no) |",
    "| resnet32x4 | MobileNetV2x2 | All layers projector (unbiased) | L2 loss | 0.01 | 53.23 ± 0.38 | 75.43 (no) |",
    "| resnet32x4 | MobileNetV2x2 | All layers projector (unbiased) | KL divergence | 0.01 | 72.60 ± 0.41 | 75.43 (no) |",
    "| resnet32x4 | MobileNetV2x2 | Using ground truth labels | L2 loss | 0.01 | 75.41 ± 0.48 | 75.43 (on-par) |",
    "| resnet32x4 | MobileNetV2x2 | Using ground truth labels | KL divergence | 0.01 | 66.87 ± 3.78 | 75.43 (no) |",
]


def golden_trials() -> pd.DataFrame:
    rows = []
    for (variant, loss), by_lr in GOLDEN_RUNS.items():
        for lr, values in by_lr.items():
            for seed, best in enumerate(values):
                last = LAST_MULTI_L2[seed] if (variant, loss, lr) == ("multi", "l2", 0.01) else None
                masked = 0.21 + 0.01 * seed if variant == "labels" else None
                rows.append(trial(variant, loss, lr, seed, best, last=last, masked=masked))
    return frame(rows)


def curves_for(trials: pd.DataFrame, n_epochs: int = 240, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """epochs.parquet rows: a step-schedule-shaped curve per run with an accuracy, peaking at best_acc."""
    rng = rng or np.random.default_rng(0)
    rows = []
    e = np.arange(1, n_epochs + 1)
    for t in trials.itertuples(index=False):
        if not math.isfinite(t.best_acc):
            continue
        done = round(t.epochs_done / t.epochs * n_epochs)  # the trial's progress, rescaled to n_epochs
        stage = np.select([e <= 0.625 * n_epochs, e <= 0.75 * n_epochs, e <= 0.875 * n_epochs], [0, 1, 2], 3)
        target = t.best_acc - np.array([9.0, 1.5, 0.4, 0.1])[stage]
        noise = rng.normal(0.0, np.array([1.5, 0.35, 0.15, 0.1])[stage])
        acc = target * (1 - np.exp(-e / (0.08 * n_epochs))) + noise
        acc = np.minimum(acc, t.best_acc)
        acc[int(0.95 * n_epochs) - 1] = t.best_acc
        acc[n_epochs - 1] = t.last_acc
        for i in range(done):
            rows.append({
                "student_id": t.student_id, "variant": t.variant, "loss": t.loss, "lr": t.lr, "seed": t.seed,
                "epoch": i + 1, "test_acc": float(acc[i]), "best_acc": float(acc[: i + 1].max()),
                "lr_epoch": t.lr, "train_loss": 1.0, "train_loss_feat": 0.5, "train_loss_ce": 0.0,
                "train_loss_kd": 0.0, "masked_frac": t.masked_frac, "images_per_s": 5000.0, "wall_s": 15.0,
            })  # fmt: skip
    return pd.DataFrame(rows)


def headline_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ")][1:]


# ---------------------------------------------------------------- golden


def test_golden_headline_reproduces_the_seed_rows():
    report = build_report(golden_trials(), pd.DataFrame(), manifest())
    lines = report.headline_markdown.splitlines()
    assert lines[0] == HEADER
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2:] == GOLDEN_HEADLINE
    assert report.headline_markdown in report.markdown
    # Knobs every variant shares once (an unknown column counts as a knob; a null knob is left out), then each
    # variant's own.
    assert ("Every variant: some_future_column=ignored, kind=simkd, multi_weights=0.666667,0.333333, pairing=index, "
            "factor=2, temperature=4.0, feature_weight=1.0, gate_normalise=kept, ce_weight=0.0, kd_weight=0.0, "
            "kd_temperature=4.0, eval_head=teacher_classifier.") in report.markdown
    assert "- **SimKD** (`simkd`): taps=last, gate=none\n" in report.markdown
    assert "- **Using ground truth labels** (`labels`): taps=last, gate=teacher_correct\n" in report.markdown


def test_select_last_uses_last_epoch_accuracy():
    report = build_report(golden_trials(), pd.DataFrame(), manifest(), select="last")
    assert headline_rows(report.headline_markdown)[2] == (
        "| resnet32x4 | MobileNetV2x2 | Multiple projector (bias) | L2 loss | 0.01 | 75.27 ± 0.28 | 75.43 (no) |"
    )
    assert "Selected on the test set" not in report.markdown
    assert "last-epoch" in report.markdown


def test_select_default_comes_from_the_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr("kdsweep.report.experiment.figures", lambda *a, **k: {})  # no PNGs needed here
    write_experiment(tmp_path, golden_trials(), manifest(select="last"))
    report = write_report(tmp_path)
    assert report.select == "last" and "75.27 ± 0.28" in report.headline_markdown
    assert write_report(tmp_path, select="best").select == "best"


def test_unknown_select_is_a_user_error():
    with pytest.raises(UserError, match="unknown accuracy selection 'worst'"):
        build_report(golden_trials(), pd.DataFrame(), manifest(), select="worst")


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "lr, text", [(0.01, "0.01"), (0.001, "0.001"), (0.05, "0.05"), (0.1, "0.1"), (0.005, "0.005"), (1e-5, "0.00001")]
)
def test_lr_is_formatted_like_the_seed(lr, text):
    assert fmt_lr(lr) == text


def test_accuracy_format():
    assert fmt_acc(75.516666, 0.180093, 3) == "75.52 ± 0.18"
    assert fmt_acc(75.6, math.nan, 1) == "75.60"
    assert fmt_acc(math.nan, math.nan, 0) == "—"


@pytest.mark.parametrize(
    "mean, expected",
    [(75.52, "yes"), (75.48, "on-par"), (75.38, "on-par"), (75.41, "on-par"), (75.37, "no"), (75.49, "yes")],
)
def test_verdict_boundaries(mean, expected):
    assert verdict(mean, 75.43, 0.05) == expected


# ---------------------------------------------------------------- aggregation edge cases


def small_manifest(**kw) -> dict:
    m = manifest(**kw)
    m["report"]["variants"] = [{"name": "simkd", "title": "SimKD"}, {"name": "multi", "title": TITLES["multi"]}]
    m["report"]["losses"] = ["l2"]
    return m


def row_for(report, title: str) -> str:
    (line,) = [r for r in headline_rows(report.headline_markdown) if f"| {title} |" in r]
    return line


def test_single_run_shows_just_the_value():
    trials = frame([trial("simkd", "l2", 0.01, 0, 75.51), trial("multi", "l2", 0.01, 0, 75.60)])
    report = build_report(trials, pd.DataFrame(), small_manifest(seeds=[0]))
    assert row_for(report, "Multiple projector (bias)") == (
        "| resnet32x4 | MobileNetV2x2 | Multiple projector (bias) | L2 loss | 0.01 | 75.60 | 75.43 (yes) |"
    )
    cell = report.cells.set_index("cell_id").loc["multi-l2-0.01"]
    assert cell["n"] == 1 and math.isnan(cell["best_std"]) and math.isnan(cell["best_ci_low"])


def test_failed_diverged_and_nan_runs_are_excluded_but_counted():
    rows = [trial("simkd", "l2", 0.01, s, v) for s, v in enumerate([75.51, 75.50, 75.40])]
    rows += [
        trial("multi", "l2", 0.01, 0, 75.60),
        trial("multi", "l2", 0.01, 1, 75.64),
        trial("multi", "l2", 0.01, 2, 12.00, status="diverged"),  # a finite accuracy that must not count
        trial("multi", "l2", 0.01, 3, None, status="failed"),
        trial("multi", "l2", 0.01, 4, None, status="completed"),  # completed but no accuracy: a failure
    ]
    report = build_report(frame(rows), pd.DataFrame(), small_manifest())
    cell = report.cells.set_index("cell_id").loc["multi-l2-0.01"]
    assert (cell["n"], cell["n_planned"], cell["completed"], cell["failed"], cell["diverged"]) == (2, 5, 2, 2, 1)
    assert cell["best_mean"] == pytest.approx(75.62)
    assert cell["best_std"] == pytest.approx(np.std([75.60, 75.64], ddof=1))
    assert cell["status"] == "n=2/5: 2 failed, 1 diverged"
    assert row_for(report, "Multiple projector (bias)").endswith("| 0.01 | 75.62 ± 0.03 (n=2/5) | 75.43 (yes) |")
    assert "n=2/5: 2 failed, 1 diverged" in report.markdown
    failures = report.markdown.split("## Failed and diverged runs")[1].split("##")[0]
    assert "| Multiple projector (bias) | L2 loss | 0.01 | 2 | diverged | 120/240 | diverged at epoch 60 |" in failures
    assert "| 3 | failed | 120/240 | RuntimeError: CUDA out of memory |" in failures
    assert "| 4 | completed | 120/240 | completed without a finite best-epoch accuracy |" in failures


def test_missing_and_running_seeds_mark_the_cell_incomplete():
    rows = [trial("simkd", "l2", 0.01, s, v) for s, v in enumerate([75.51, 75.50, 75.40])]
    rows += [trial("multi", "l2", 0.01, 0, 75.60), trial("multi", "l2", 0.01, 1, 75.64)]
    rows += [trial("multi", "l2", 0.01, 2, None, status="running")]
    rows += [trial("multi", "l2", 0.05, 0, 74.00), trial("multi", "l2", 0.05, 1, 74.20)]  # seed 2 has no row at all
    report = build_report(frame(rows), pd.DataFrame(), small_manifest())
    cells = report.cells.set_index("cell_id")
    assert cells.loc["multi-l2-0.01", "status"] == "n=2/3: 1 running"
    assert cells.loc["multi-l2-0.05", "status"] == "n=2/3: 1 missing"
    assert cells.loc["simkd-l2-0.01", "status"] == "complete"
    # A seed the space itself excluded is not missing: the manifest says how many runs each cell planned.
    planned = {"simkd-l2-0.01": 3, "multi-l2-0.01": 3, "multi-l2-0.05": 2}
    cells = build_report(frame(rows), pd.DataFrame(), small_manifest(runs_per_cell=planned)).cells.set_index("cell_id")
    assert cells.loc["multi-l2-0.05", "status"] == "complete" and cells.loc["multi-l2-0.05", "n_planned"] == 2
    assert cells.loc["multi-l2-0.01", "status"] == "n=2/3: 1 running"
    assert row_for(report, "Multiple projector (bias)").endswith("| 75.62 ± 0.03 (n=2/3) | 75.43 (yes) |")
    assert "| n=2/3: 1 running |" in report.markdown
    assert "Partial sweep" in report.markdown


def test_a_row_without_any_completed_run():
    rows = [trial("simkd", "l2", 0.01, s, v) for s, v in enumerate([75.51, 75.50, 75.40])]
    rows += [trial("multi", "l2", 0.01, s, None, status="running") for s in range(3)]
    rows += [trial("multi", "kl", 0.01, s, None, status="failed") for s in range(3)]
    rows += [trial("labels", "l2", 0.01, s, None, status="pending") for s in range(3)]  # not in the manifest: last
    m = small_manifest(losses=["l2", "kl"])
    report = build_report(frame(rows), curves_for(frame(rows)), m)
    assert row_for(report, "Multiple projector (bias) | L2 loss").endswith("| — | — (running) | n/a |")
    assert row_for(report, "Multiple projector (bias) | KL divergence").endswith("| — | — | n/a |")
    last = headline_rows(report.headline_markdown)[-1]
    assert last.endswith("| Using ground truth labels | L2 loss | — | — (pending) | n/a |")
    assert set(report.figures) == {"acc_vs_lr", "curves"}


def test_ties_go_to_the_smaller_lr_and_order_follows_the_manifest():
    rows = [trial("multi", "l2", lr, s, v) for lr in (0.05, 0.01) for s, v in enumerate([75.0, 75.2, 75.4])]
    rows += [trial("simkd", "l2", 0.01, s, v) for s, v in enumerate([75.51, 75.50, 75.40])]
    report = build_report(frame(rows), pd.DataFrame(), small_manifest())
    lines = headline_rows(report.headline_markdown)
    assert "| SimKD |" in lines[0]  # manifest order, although trials list multi first
    assert "| 0.01 | 75.20 ± 0.20 |" in lines[1]


def test_no_configured_number_and_no_in_sweep_baseline():
    m = manifest(baseline={"label": "SimKD (paper)", "accuracy": None, "variant": None})
    report = build_report(golden_trials(), pd.DataFrame(), m)
    assert all(r.endswith("| n/a |") for r in headline_rows(report.headline_markdown))
    assert "In sweep: none" in report.markdown


def test_minimal_manifest_still_reports():
    trials = golden_trials().drop(columns=["title", "teacher", "student", "masked_frac"])
    report = build_report(trials, pd.DataFrame(), {})
    first = headline_rows(report.headline_markdown)[0]
    assert first == "| ? | ? | simkd | L2 loss | 0.01 | 75.47 ± 0.06 | n/a |"


def test_missing_required_columns_is_a_user_error():
    with pytest.raises(UserError, match="trials.parquet lacks the column.*best_acc.*kdsweep run"):
        build_report(golden_trials().drop(columns=["best_acc"]), pd.DataFrame(), manifest())


# ---------------------------------------------------------------- statistics against scipy


@pytest.mark.parametrize("df", [1, 1.5, 2, 2.7, 4, 9.3, 30, 250])
def test_t_distribution_matches_scipy(df):
    for t in (-40.0, -6.0, -2.5, -1.0, -0.2, 0.0, 1e-4, 0.7, 1.96, 3.3, 12.0, 300.0):
        assert t_cdf(t, df) == pytest.approx(st.t.cdf(t, df), abs=1e-9)
        assert t_sf(t, df) == pytest.approx(st.t.sf(t, df), rel=1e-6, abs=1e-12)
    for p in (1e-7, 0.001, 0.025, 0.2, 0.5, 0.8, 0.975, 0.999, 1 - 1e-7):
        assert t_ppf(p, df) == pytest.approx(st.t.ppf(p, df), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize(
    "a, b",
    [
        ([75.60, 75.64, 75.31], [75.51, 75.50, 75.40]),
        ([75.29, 75.94, 75.00], [75.51, 75.50, 75.40]),
        ([62.55, 69.50, 68.59], [75.51, 75.50]),
        ([73.55, 74.27, 74.15, 74.0, 73.9], [75.51, 75.50, 75.40]),
    ],
)
def test_welch_and_confidence_interval_match_scipy(a, b):
    ours = welch_t_test(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-6)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    assert ours.df == pytest.approx(ref.df, rel=1e-9)
    lo, hi = confidence_interval(a)
    rlo, rhi = st.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=st.sem(a))
    assert (lo, hi) == (pytest.approx(rlo, abs=1e-6), pytest.approx(rhi, abs=1e-6))


def test_degenerate_tests_are_nan():
    assert math.isnan(welch_t_test([75.0], [75.0, 75.1]).p)
    assert math.isnan(welch_t_test([75.0, 75.0], [75.0, 75.0]).p)
    assert all(math.isnan(x) for x in confidence_interval([75.0]))


def test_report_p_values_and_cis_match_scipy():
    report = build_report(golden_trials(), pd.DataFrame(), manifest())
    head = report.headline.set_index(["variant", "loss"])
    base = GOLDEN_RUNS[("simkd", "l2")][0.01]
    for key in (("multi", "l2"), ("labels", "l2"), ("all_layers", "kl")):
        ref = st.ttest_ind(GOLDEN_RUNS[key][0.01], base, equal_var=False).pvalue
        assert head.loc[key, "welch_p"] == pytest.approx(ref, rel=1e-6)
    assert head.loc[("simkd", "l2"), "is_baseline"] and math.isnan(head.loc[("simkd", "l2"), "welch_p"])
    cell = report.cells.set_index("cell_id").loc["multi-l2-0.01"]
    values = GOLDEN_RUNS[("multi", "l2")][0.01]
    rlo, rhi = st.t.interval(0.95, 2, loc=np.mean(values), scale=st.sem(values))
    assert cell["best_ci_low"] == pytest.approx(rlo, abs=1e-6)
    assert cell["best_ci_high"] == pytest.approx(rhi, abs=1e-6)
    p = st.ttest_ind(GOLDEN_RUNS[("multi", "l2")][0.01], base, equal_var=False).pvalue
    assert f"| Multiple projector (bias) | L2 loss | 0.01 | 75.52 ± 0.18 | +0.05 | {p:.3f} |" in report.markdown


# ---------------------------------------------------------------- export


def test_the_cells_table_has_a_column_per_measured_metric_titled_by_its_method():
    """Metrics come by name from the manifest, titles and meanings from the methods (Method.metric_titles); a
    sweep without SimKD's gate has no Masked column, a plug-in's metric gets one under its own name."""
    gated = build_report(golden_trials(), pd.DataFrame(), manifest(
        metrics=["masked_frac"], metric_titles={"masked_frac": ["Masked (gated)", "the gate's dropped share"]}))
    header = next(line for line in gated.markdown.splitlines() if line.startswith("| Projector type | Loss | lr |"))
    assert header.endswith("| Best epoch (mean) | Masked (gated) |")
    assert "Masked (gated) is the gate's dropped share." in gated.markdown
    assert "| 22.0% |" in gated.markdown  # labels cells: seeds 0.21, 0.22, 0.23

    trials = golden_trials().drop(columns=["masked_frac"]).assign(toy_epoch=0.5)
    toy = build_report(trials, pd.DataFrame(), manifest(metrics=["toy_epoch"], metric_titles={}))
    header = next(line for line in toy.markdown.splitlines() if line.startswith("| Projector type | Loss | lr |"))
    assert header.endswith("| Best epoch (mean) | toy_epoch |") and "Masked" not in toy.markdown
    assert list(toy.cells.columns)[-2:] == ["best_epoch_mean", "toy_epoch"] and (toy.cells.toy_epoch == 0.5).all()
    none = build_report(golden_trials().drop(columns=["masked_frac"]), pd.DataFrame(), manifest(metrics=[]))
    assert list(none.cells.columns)[-1] == "best_epoch_mean"


def test_csv_and_json_export_the_cell_table():
    cells = build_report(golden_trials(), pd.DataFrame(), manifest()).cells
    assert len(cells) == 24
    from io import StringIO

    back = pd.read_csv(StringIO(cells_csv(cells)))
    assert list(back.columns) == list(cells.columns)
    row = back[back["cell_id"] == "multi-l2-0.01"].iloc[0]
    assert (row["n"], row["best_mean"], row["lr"]) == (3, pytest.approx(75.5166667), 0.01)
    records = json.loads(cells_json(cells))
    assert len(records) == 24
    rec = next(r for r in records if r["cell_id"] == "multi-l2-0.01")
    assert rec["best_std"] == pytest.approx(np.std([75.60, 75.64, 75.31], ddof=1))
    assert rec["masked_frac"] is None  # NaN -> null
    assert next(r for r in records if r["variant"] == "labels")["masked_frac"] == pytest.approx(0.22)


# ---------------------------------------------------------------- the experiment folder


def write_experiment(path: Path, trials: pd.DataFrame, man: dict, epochs: pd.DataFrame | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(path / "trials.parquet", index=False)
    (curves_for(trials, 40) if epochs is None else epochs).to_parquet(path / "epochs.parquet", index=False)
    (path / "manifest.json").write_text(json.dumps(man))
    return path


def test_write_report_writes_markdown_plots_and_export(tmp_path):
    exp = write_experiment(tmp_path / "exp", golden_trials(), manifest())
    report = write_report(exp, fmt="csv")
    text = (exp / "results.md").read_text(encoding="utf-8")
    assert text == report.markdown
    for line in GOLDEN_HEADLINE:
        assert line in text
    assert "![" in text and "(plots/acc_vs_lr.png)" in text and "(plots/curves.png)" in text
    assert "Selected on the test set" in text and "79.42%" in text and "cifar100" in text
    for name in ("acc_vs_lr", "curves"):
        data = (exp / "plots" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert 20_000 < len(data) < 2_000_000
    assert pd.read_csv(exp / "cells.csv").shape == (24, report.cells.shape[1])
    assert not list(exp.glob("**/*.tmp*"))


@pytest.mark.parametrize("name", ["trials.parquet", "epochs.parquet", "manifest.json"])
def test_missing_input_is_a_user_error_naming_the_file(tmp_path, name):
    exp = write_experiment(tmp_path, golden_trials(), manifest())
    (exp / name).unlink()
    with pytest.raises(UserError, match=rf"{name}.*kdsweep run"):
        write_report(exp)


def test_unreadable_inputs_are_user_errors(tmp_path):
    exp = write_experiment(tmp_path, golden_trials(), manifest())
    (exp / "trials.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="cannot read .*trials.parquet"):
        write_report(exp)
    (exp / "manifest.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot read .*manifest.json"):
        write_report(exp)
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown export format 'xlsx'"):
        write_report(exp, fmt="xlsx")


def test_building_a_report_leaves_pyplot_alone():
    already = "matplotlib.pyplot" in sys.modules
    build_report(golden_trials(), curves_for(golden_trials(), 20), manifest())
    assert already or "matplotlib.pyplot" not in sys.modules
    for source in (Path(__file__).resolve().parents[1] / "kdsweep" / "report").glob("*.py"):
        text = source.read_text()
        assert "matplotlib.pyplot" not in text and "import pyplot" not in text, source.name
        assert "matplotlib.use(" not in text, source.name


# ---------------------------------------------------------------- the sweep -> report contract


def _fabricated_record(run, acc: float, gated: bool) -> RunRecord:
    """What a finished two-epoch run's progress.json holds, built through RunRecord.add_epoch as training does:
    epoch 1 at `acc` (the best), epoch 2 at acc - 3, SimKD's feature loss part and, when gated, its mask metric."""
    record = RunRecord(run.run_id, group_id="g-fabricated", epochs=2, status="completed", teacher_acc=55.0)
    for epoch, test_acc in ((1, acc), (2, acc - 3.0)):
        record.add_epoch({"epoch": epoch, "test_acc": test_acc, "lr_epoch": run.lr, "train_loss": 1.0 / epoch,
                          "train_loss_feat": 1.0 / epoch, **({"masked_frac": 0.25} if gated else {}),
                          "images_per_s": 100.0, "wall_s": 2.0, "finished_at": 1.7e9 + epoch})
    return record


def _table(markdown: str, header_start: str) -> list[str]:
    """The rows of the markdown table whose header starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    return [line for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:])]


def test_the_sweeps_exports_are_what_the_report_reads(tmp_path):
    """Records as the engine writes them -> the driver's export (trials_frame, epochs_frame, manifest) -> the
    report, without Ray: a column renamed or retyped on either side fails here, not only in the slow sweep test."""
    teacher = save_teacher(tmp_path / "t.pth")
    space = load_space(write_space(tmp_path, tiny_space(tmp_path / "results", teacher=teacher, seeds=(0, 1, 2))))
    store = Store(str(space.root))
    write_space_and_manifest(space, store, device="cpu", ray_version=None)
    base = {("simkd", "l2"): 40.0, ("simkd", "kl"): 50.0, ("labels", "l2"): 45.0, ("labels", "kl"): 35.0}
    for run in space.runs:
        acc = base[run.labels["variant"], run.method.loss] + 2.0 * run.seed  # each cell: mean base + 2, std 2
        record = _fabricated_record(run, acc, gated=run.labels["variant"] == "labels")
        store.write_json(f"runs/{run.run_id}/progress.json", record.to_dict())
    export(space, store)
    root = Path(space.root)
    report = write_report(root)

    md = report.markdown
    assert "12 planned student runs in 4 cells (4 variant × loss rows, 1 learning rate): 12 completed." in md
    assert _table(md, "| Teacher Arc |") == [  # Improvement from Baseline: the configured 30.00, and above it
        "| resnet8 | resnet8 | SimKD | L2 loss | 0.05 | 42.00 ± 2.00 | 30.00 (yes) |",
        "| resnet8 | resnet8 | SimKD | KL divergence | 0.05 | 52.00 ± 2.00 | 30.00 (yes) |",
        "| resnet8 | resnet8 | Using ground truth labels | L2 loss | 0.05 | 47.00 ± 2.00 | 30.00 (yes) |",
        "| resnet8 | resnet8 | Using ground truth labels | KL divergence | 0.05 | 37.00 ± 2.00 | 30.00 (yes) |",
    ]
    assert _table(md, "| Projector type | Loss | lr | n |") == [  # best epoch 1, last epoch 3 points lower
        "| SimKD | L2 loss | 0.05 | 3/3 | complete | 42.00 ± 2.00 | 39.00 ± 2.00 | [37.03, 46.97] | 1.0 | — |",
        "| SimKD | KL divergence | 0.05 | 3/3 | complete | 52.00 ± 2.00 | 49.00 ± 2.00 | [47.03, 56.97] | 1.0 | — |",
        "| Using ground truth labels | L2 loss | 0.05 | 3/3 | complete | 47.00 ± 2.00 | 44.00 ± 2.00 | [42.03, 51.97] "
        "| 1.0 | 25.0% |",
        "| Using ground truth labels | KL divergence | 0.05 | 3/3 | complete | 37.00 ± 2.00 | 34.00 ± 2.00 "
        "| [32.03, 41.97] | 1.0 | 25.0% |",
    ]
    assert _table(md, "| Variant | Loss | lr | feat |") == [  # the last epoch's loss part; the mask's mean
        "| SimKD | L2 loss | 0.05 | 0.5 | — |",
        "| SimKD | KL divergence | 0.05 | 0.5 | — |",
        "| Using ground truth labels | L2 loss | 0.05 | 0.5 | 0.25 |",
        "| Using ground truth labels | KL divergence | 0.05 | 0.5 | 0.25 |",
    ]
    assert _table(md, "| Projector type | Distillation Loss | Learning rate (best) | Test acc | Δ vs in-sweep |")[1:] == [
        "| SimKD | KL divergence | 0.05 | 52.00 ± 2.00 | +10.00 | 0.004 |",  # Welch t = 6.12, 4 df
        "| Using ground truth labels | L2 loss | 0.05 | 47.00 ± 2.00 | +5.00 | 0.038 |",
        "| Using ground truth labels | KL divergence | 0.05 | 37.00 ± 2.00 | -5.00 | 0.038 |",
    ]
    assert "- **Using ground truth labels** (`labels`): gate=teacher_correct\n" in md
    assert "Every variant: kind=simkd, taps=last, " in md
    assert "- Teacher: resnet8 (`resnet8`), checkpoint `" + teacher + "`, test accuracy 55.00%" in md
    epochs = pd.read_parquet(root / "epochs.parquet")
    assert len(epochs) == 24 and list(epochs.columns[:6]) == ["student_id", "variant", "loss", "lr", "seed", "epoch"]
    assert {"train_loss_feat", "masked_frac"} <= set(epochs.columns)
    assert (root / "plots" / "curves.png").read_bytes().startswith(b"\x89PNG")
