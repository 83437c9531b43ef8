"""`kdsweep report`: refresh the tables from the stored records, then write results.md and the plots."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from kdsweep.storage import Store
from kdsweep.sweep import results
from kdsweep.sweep.experiment import StoredSpaceProblem, open_experiment
from kdsweep.sweep.lock import is_held


def report_experiment(location: str, select: str | None = None, fmt: str | None = None,
                      only_current: bool = False) -> str:
    store = Store(location)
    if store.exists("space.yaml") and not is_held(store):  # a running sweep re-exports its tables itself
        try:
            space, store = open_experiment(location)
        except StoredSpaceProblem as err:  # the tables as last exported are still worth reporting
            warnings.warn(f"{err.location} cannot be used ({err.reason}); reporting the tables as the last sweep "
                          f"exported them (`kdsweep run SPACE.yaml` writes the copy again)")
        else:
            results.export(space, store, live=False)
    report = build_report_in(store, select=select, fmt=fmt, only_current=only_current)
    return f"{report.headline_markdown}\nreport written to {store.location('results.md')}"


def build_report_in(store: Store, select: str | None = None, fmt: str | None = None, only_current: bool = False):
    """Write results.md, plots/ (and cells.<fmt>) into the experiment folder, a local path or a URI."""
    from kdsweep.report import write_report

    local = store.local_path()
    if local is not None:
        return write_report(local, select=select, fmt=fmt, only_current=only_current)
    # Object storage: build in a temporary folder, then upload what the report wrote.
    with tempfile.TemporaryDirectory(prefix="kdsweep-report-") as tmp:
        tmp_path = Path(tmp)
        for name in ("trials.parquet", "epochs.parquet", "manifest.json"):
            if store.exists(name):
                (tmp_path / name).write_bytes(store.read_bytes(name))
        report = write_report(tmp_path, select=select, fmt=fmt, only_current=only_current)
        for path in tmp_path.rglob("*"):
            rel = path.relative_to(tmp_path).as_posix()
            if path.is_file() and not rel.endswith((".parquet", "manifest.json")):
                store.write_bytes(rel, path.read_bytes())
    return report
