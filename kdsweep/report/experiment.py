"""An experiment folder -> results.md, plots/*.png and (on request) cells.csv / cells.json.

`build_report` is pure (tables and figures in memory); `write_report` does the reading and writing around it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from kdsweep.errors import UserError
from kdsweep.report.aggregate import cell_table, headline_rows, prepare_trials
from kdsweep.report.document import results_markdown
from kdsweep.report.export import cells_text, check_format
from kdsweep.report.plots import figures, png_bytes
from kdsweep.report.settings import check_select, settings_from_manifest
from kdsweep.report.tables import headline_markdown
from kdsweep.storage import Store

TRIALS, EPOCHS, MANIFEST, RESULTS = "trials.parquet", "epochs.parquet", "manifest.json", "results.md"


@dataclass
class Report:
    headline_markdown: str  # the seed's table, ready to print
    markdown: str  # the whole results.md
    cells: pd.DataFrame  # one row per (variant, loss, lr): counts by status, mean/std/CI of best and last accuracy
    figures: dict[str, Figure]  # file stem under plots/ -> figure
    headline: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (variant, loss), unformatted
    select: str = "best"


def build_report(trials: pd.DataFrame, epochs: pd.DataFrame, manifest: dict, select: str = "best",
                 only_current: bool = False) -> Report:
    """Tables, markdown and figures from the three inputs; no I/O. `only_current` leaves out the runs outside the
    experiment's current space."""
    check_select(select)
    settings = settings_from_manifest(manifest or {})
    t = prepare_trials(trials, settings)
    if only_current:
        t = t[t["in_space"]].reset_index(drop=True)
        epochs = epochs[epochs["student_id"].isin(set(t["student_id"]))]
    cells = cell_table(t, settings, select)
    head = headline_rows(t, cells, settings, select)
    headline = headline_markdown(head, settings)
    markdown = results_markdown(manifest or {}, settings, select, t, cells, head, headline)
    figs = figures(cells, head, epochs, t, settings, select)
    return Report(headline, markdown, cells, figs, head, select)


def _missing(path: Path) -> UserError:
    return UserError(
        f"{path} does not exist. `kdsweep run` writes {path.name} into the experiment folder; check the folder, or "
        "run (or resume) the sweep first."
    )


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise _missing(path)
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated or foreign files
        raise UserError(
            f"cannot read {path} ({type(e).__name__}: {e}). `kdsweep run` writes it; if the sweep is still "
            "writing, try again in a moment, otherwise resume the sweep to rewrite it."
        ) from None


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _missing(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}). `kdsweep run` writes it; resume the sweep to rewrite it.") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a JSON object; `kdsweep run` writes it as one, so the file was replaced.")
    return manifest


def write_report(exp_dir: str | Path, select: str | None = None, fmt: str | None = None,
                 only_current: bool = False) -> Report:
    """Read an experiment folder, write results.md, plots/acc_vs_lr.png, plots/curves.png and (fmt) cells.<fmt>.

    select None: the manifest's report.select, else "best".
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise UserError(f"experiment folder {exp_dir} does not exist; `kdsweep run` creates it.")
    if fmt is not None:
        check_format(fmt)
    manifest = _read_manifest(exp_dir / MANIFEST)
    trials = _read_parquet(exp_dir / TRIALS)
    epochs = _read_parquet(exp_dir / EPOCHS)
    if select is None:
        select = str((manifest.get("report") or {}).get("select") or "best")
    report = build_report(trials, epochs, manifest, check_select(select), only_current)
    # Through Store: every file is written atomically, and a full or read-only disk is a UserError naming it.
    store = Store(str(exp_dir))
    for name, fig in report.figures.items():
        store.write_bytes(f"plots/{name}.png", png_bytes(fig))
    store.write_bytes(RESULTS, report.markdown.encode())
    if fmt is not None:
        store.write_bytes(f"cells.{fmt}", cells_text(report.cells, fmt).encode())
    return report
