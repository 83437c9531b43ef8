"""The cell table as CSV or JSON for people who post-process (NaN is an empty CSV field and a JSON null)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from kdsweep.errors import UserError

FORMATS = ("csv", "json")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; known: {', '.join(FORMATS)}")
    return fmt


def _plain(value: object) -> object:
    """JSON-ready Python scalars: numpy numbers unwrapped, NaN/NA as None."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cells_csv(cells: pd.DataFrame) -> str:
    return cells.to_csv(index=False, lineterminator="\n")


def cells_json(cells: pd.DataFrame) -> str:
    records = [{k: _plain(v) for k, v in row.items()} for row in cells.to_dict(orient="records")]
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"


def cells_text(cells: pd.DataFrame, fmt: str) -> str:
    """The cell table as `fmt` (csv or json)."""
    return cells_csv(cells) if check_format(fmt) == "csv" else cells_json(cells)
