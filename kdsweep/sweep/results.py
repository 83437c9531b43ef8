"""The tidy result files of an experiment, rebuilt from the runs' progress records at any time.

trials.parquet  one row per student run (cell x seed), whatever the grouping, in the space's order
epochs.parquet  one row per student per finished epoch
manifest.json   versions, device, times, dataset, recipe, teacher, report settings, checkpoint checksums
space.yaml      the space as run (overrides applied)

The progress records are the source of truth, so these files can be deleted and re-exported (`kdsweep status`
and `kdsweep report` do so), and a crash at any point leaves the last export readable.
"""

from __future__ import annotations

import io
import json
import platform
import warnings
from collections import Counter
import subprocess
import time
from pathlib import Path

import pandas as pd
import yaml

from kdsweep import __version__
from kdsweep.engine import RunRecord
from kdsweep.engine.records import EPOCH_KEYS, measured
from kdsweep.methods import methods
from kdsweep.space import Space
from kdsweep.storage import Store
from kdsweep.typed_config import knob_text
from kdsweep.sweep.plan import read_records

STUDENT_DISPLAY = {"MobileNetV2_1_0": "MobileNetV2x2"}  # the SimKD paper's and the seed report's name
LOSS_PART_PREFIX = "train_loss_"


def loss_display() -> dict[str, str]:
    """Every registered method's report names for its loss labels."""
    return {label: name for cls in methods().values() for label, name in cls.loss_display.items()}


def metric_titles() -> dict[str, list[str]]:
    """Every registered method's titles and meanings of its metrics (Method.metric_titles)."""
    return {name: list(title) for cls in methods().values() for name, title in cls.metric_titles.items()}


def measured_names(records) -> tuple[list[str], list[str]]:
    """(loss-part keys, metric keys) that any epoch of `records` holds, in the order they were first recorded:
    whatever the runs' methods returned, with no list to keep up to date here."""
    seen = {}
    for rec in records:
        for entry in rec.history if rec else []:
            seen.update(dict.fromkeys(measured(entry)))
    parts = [k for k in seen if k.startswith(LOSS_PART_PREFIX)]
    return parts, [k for k in seen if not k.startswith(LOSS_PART_PREFIX)]


def knob_columns(runs) -> list[str]:
    """The method knobs of `runs` as trials columns: `kind` and every knob of every method used, named as in the
    method's config, in first-seen order (SimKD's `loss` is the table's own loss column)."""
    return [k for k in dict.fromkeys(k for r in runs for k in r.method.as_record()) if k != "loss"]


def _knob_value(value):
    """A knob as one parquet cell: tuples and lists of numbers as text ('0.667,0.333'), scalars as they are."""
    return knob_text(value) if isinstance(value, (list, tuple)) else value


def reported_runs(space: Space):
    """(run, in the current space?) for every run the tables cover: the space's, then those outside it."""
    return [*((r, True) for r in space.runs), *((r, False) for r in space.outside)]


def reported_records(space: Space, records: dict[str, RunRecord | None]) -> list[RunRecord | None]:
    """The records of the runs the tables cover (not, say, the teacher's training run), in table order."""
    return [records.get(r.run_id) for r, _ in reported_runs(space)]


def trials_frame(space: Space, records: dict[str, RunRecord | None], live: bool) -> pd.DataFrame:
    rows = []
    knob_axes = list(space.file.axes.knob_axes())
    knobs = knob_columns(r for r, _ in reported_runs(space))
    parts, metrics = measured_names(reported_records(space, records))
    # How each run trained: teacher source and the resolved speed switches (engine/fastpath.py), as prefixed columns.
    execution = list(dict.fromkeys(k for rec in reported_records(space, records) if rec and rec.execution
                                   for k in rec.execution))
    for run, in_space in reported_runs(space):
        rec = records.get(run.run_id)
        status = "pending" if rec is None else rec.status
        if status == "running" and not live:
            status = "pending"  # interrupted: resumes from its checkpoint on the next `kdsweep run`
        row = {
            "student_id": run.run_id, "cell_id": run.labels["cell_id"], "variant": run.labels["variant"],
            "title": run.labels["title"], "loss": run.method.loss, "lr": run.lr, "seed": run.seed,
            "teacher": space.teacher.spec.arch, "student": run.student_arch, "status": status,
            "epochs": run.recipe.epochs, "epochs_done": rec.epochs_done if rec else 0,
            "best_acc": _num(rec and rec.best_acc), "best_epoch": rec.best_epoch if rec else None,
            "last_acc": _num(rec and rec.last_acc), "teacher_acc": _num(rec and rec.teacher_acc),
            "diverged_epoch": rec.diverged_epoch if rec else None,
            "wall_s": rec.wall_s if rec else 0.0, "group_id": rec.group_id if rec else None,
            "error": rec.error if rec else None, "in_space": in_space,
        }
        record = run.method.as_record()
        row.update({k: _knob_value(record.get(k)) for k in knobs})
        row.update({f"axis_{k}": run.labels.get(k) for k in knob_axes})
        last = rec.history[-1] if rec and rec.history else {}
        row.update({k: _num(last.get(k)) for k in parts})  # the last epoch's loss parts
        row.update({k: _num(rec and rec.mean_over_epochs(k)) for k in metrics})  # metrics: mean over epochs
        row.update({f"execution_{k}": (rec.execution or {}).get(k) if rec else None for k in execution})
        rows.append(row)
    frame = pd.DataFrame(rows)
    integers = [k for k in knobs if all(isinstance(r[k], int) and not isinstance(r[k], bool)
                                        for r in rows if r[k] is not None)]
    for column in ("best_epoch", "diverged_epoch", *integers):  # an int knob stays one beside other methods' nulls
        frame[column] = frame[column].astype("Int64")
    return frame


def epochs_frame(space: Space, records: dict[str, RunRecord | None]) -> pd.DataFrame:
    parts, metrics = measured_names(reported_records(space, records))
    base = [k for k in EPOCH_KEYS if k != "finished_at"]
    columns = [*base[:6], *parts, *metrics, *base[6:]]  # ... train_loss, its parts, metrics, images_per_s, wall_s
    rows = []
    for run, _ in reported_runs(space):
        rec = records.get(run.run_id)
        for entry in rec.history if rec else []:
            rows.append({"student_id": run.run_id, "variant": run.labels["variant"], "loss": run.method.loss,
                         "lr": run.lr, "seed": run.seed, **{c: entry.get(c) for c in columns}})
    frame = pd.DataFrame(rows, columns=["student_id", "variant", "loss", "lr", "seed", *columns])
    floats = {c: "float64" for c in columns if c not in ("epoch", "best_epoch")}
    return frame.astype(floats).astype({"epoch": "int64", "best_epoch": "Int64"})


def export(space: Space, store: Store, live: bool = False) -> pd.DataFrame:
    """Rewrite trials.parquet, epochs.parquet and the manifest's checksums from the progress records."""
    records = read_records(store, [r.run_id for r, _ in reported_runs(space)])
    trials = trials_frame(space, records, live)
    store.write_bytes("trials.parquet", _parquet(trials))
    store.write_bytes("epochs.parquet", _parquet(epochs_frame(space, records)))
    manifest = read_manifest(store)
    devices = sorted({r.device for r in records.values() if r is not None and r.device})
    if devices:
        manifest["training_devices"] = devices
    # The newest checkpoint of every run, the teacher's training run included: {"file", "sha256"}.
    teacher_run = space.teacher.training_run
    everything = {**records, **(read_records(store, [teacher_run.run_id]) if teacher_run else {})}
    manifest["checkpoints"] = {k: r.checkpoint for k, r in everything.items() if r is not None and r.checkpoint}
    teacher_accs = [r.teacher_acc for r in records.values() if r is not None and r.teacher_acc is not None]
    manifest["teacher"]["test_acc"] = teacher_accs[0] if teacher_accs else manifest["teacher"].get("test_acc")
    # The teacher checkpoint the students distilled from; two checksums mean it was replaced mid-experiment.
    teacher_shas = sorted({r.teacher_sha256 for r in records.values() if r is not None and r.teacher_sha256})
    if teacher_shas:
        manifest["teacher"]["sha256"] = teacher_shas[0] if len(teacher_shas) == 1 else teacher_shas
    manifest["report"] = report_settings(space)  # the runs outside the space may have changed since the start
    parts, metrics = measured_names(reported_records(space, records))
    manifest["report"].update({"loss_parts": parts, "metrics": metrics})
    store.write_json("manifest.json", manifest)
    return trials


def write_space_and_manifest(space: Space, store: Store, device: str, ray_version: str | None) -> None:
    """At the start of a sweep: the space as run, and a fresh manifest (start time, versions, device)."""
    import torch

    text = yaml.safe_dump(space_as_run(space), sort_keys=False).encode()
    before = store.read_bytes("space.yaml") if store.exists("space.yaml") else text
    if before != text:  # the space changed: keep the one it replaces
        store.write_bytes(f"history/space-{time.strftime('%Y%m%d-%H%M%S')}.yaml", before)
    store.write_bytes("space.yaml", text)
    f = space.file
    manifest = read_manifest(store) if store.exists("manifest.json") else {}
    manifest.update({
        "experiment": f.experiment,
        "space_file": space.source,
        "kdsweep_version": __version__, "torch_version": torch.__version__, "ray_version": ray_version,
        "python_version": platform.python_version(), "git_commit": _git_commit(),
        "device": device,
        "started_at": _now(), "finished_at": None,
        "first_started_at": manifest.get("first_started_at") or _now(),
        "dataset": dict(space.file.dataset),
        "recipe": space.runs[0].recipe.as_record(),
        # A teacher trained here is named relative to the experiment folder, which may move.
        "teacher": {"arch": f.teacher.arch, "checkpoint": space.teacher.spec.checkpoint.removeprefix(f"{space.root}/"),
                    "identity": space.teacher_identity,
                    "trained_by_kdsweep": space.teacher.training_run is not None,
                    "expected_accuracy": f.teacher.expected_accuracy,
                    "test_acc": manifest.get("teacher", {}).get("test_acc")},
        "report": report_settings(space),
    })
    store.write_json("manifest.json", manifest)


def space_as_run(space: Space) -> dict:
    """The document with overrides applied and every location absolute, so it reloads from anywhere."""
    raw = dict(space.raw)
    raw["storage"] = space.root.rsplit("/", 1)[0]
    for knob in space.data.dataset.paths:  # the dataset's locations, as resolved
        if getattr(space.data, knob) is not None:
            raw["dataset"] = {**raw["dataset"], knob: getattr(space.data, knob)}
    if space.teacher.training_run is None:
        raw["teacher"] = {**raw["teacher"], "checkpoint": space.teacher.spec.checkpoint}
    if space.plugins:
        raw["plugins"] = list(space.plugins)
    return raw


def mark_finished(store: Store) -> None:
    manifest = read_manifest(store)
    manifest["finished_at"] = _now()
    store.write_json("manifest.json", manifest)


def report_settings(space: Space) -> dict:
    f = space.file
    outside_variants = list({r.labels["variant"]: {"name": r.labels["variant"], "title": r.labels["title"]}
                             for r in space.outside if r.labels["variant"] not in f.variants}.values())
    return {
        "baseline": f.baseline.model_dump(),
        "teacher_display": f.teacher.display_name or f.teacher.arch,
        "student_display": f.student.display_name or STUDENT_DISPLAY.get(f.student.arch, f.student.arch),
        "loss_display": {**loss_display(), **f.report.loss_names},
        "metric_titles": metric_titles(),
        "select": f.report.select,
        "variants": [{"name": k, "title": v.title} for k, v in f.variants.items()] + outside_variants,
        "losses": list(f.axes.loss) if f.axes.loss else list(dict.fromkeys(r.method.loss for r in space.runs)),
        "seeds": list(f.axes.seed),
        "runs_per_cell": dict(Counter(r.labels["cell_id"] for r in space.runs)),  # runs outside it: planned by none
    }


def read_manifest(store: Store) -> dict:
    """The manifest, or a fresh one when it is missing or damaged: everything in it is rebuilt from the space and
    the run records by the next export (`kdsweep run` also rewrites versions, times and settings)."""
    if not store.exists("manifest.json"):
        return {"teacher": {}}
    try:
        manifest = json.loads(store.read_bytes("manifest.json"))
    except (UnicodeDecodeError, ValueError) as err:
        problem = f"is not JSON ({getattr(err, 'msg', None) or type(err).__name__})"
    else:
        if isinstance(manifest, dict) and isinstance(manifest.get("teacher", {}), dict):
            return {"teacher": {}, **manifest}
        problem = f"holds a JSON {type(manifest).__name__} without a `teacher` object"
    warnings.warn(f"manifest {store.location('manifest.json')} {problem}; it is rebuilt from the space and the "
                  f"run records")
    return {"teacher": {}}


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _num(value) -> float:
    return float("nan") if value is None or value is False else float(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
