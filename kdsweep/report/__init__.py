"""Tables and plots from an experiment's tidy result files (trials.parquet, epochs.parquet, manifest.json).

  settings    the manifest's `report` section: baseline, display names, orders
  stats       mean, sample std, Student-t CI, Welch's test (pure math, no scipy)
  aggregate   trials -> cell table (per variant x loss x lr) and headline rows (per variant x loss)
  tables      markdown, with the seed report's columns and formats
  plots       accuracy vs lr and accuracy curves (matplotlib Figure on Agg, no pyplot)
  document    results.md
  export      the cell table as CSV or JSON
  experiment  build_report (pure) and write_report (the experiment folder)
"""

from kdsweep.report.aggregate import cell_table, headline_rows, prepare_trials
from kdsweep.report.experiment import Report, build_report, write_report
from kdsweep.report.export import FORMATS, cells_csv, cells_json, cells_text
from kdsweep.report.settings import SELECTS, Settings, settings_from_manifest
from kdsweep.report.stats import confidence_interval, t_cdf, t_ppf, welch_t_test
from kdsweep.report.tables import HEADLINE_COLUMNS, headline_markdown

__all__ = [
    "FORMATS",
    "HEADLINE_COLUMNS",
    "SELECTS",
    "Report",
    "Settings",
    "build_report",
    "cell_table",
    "cells_csv",
    "cells_json",
    "cells_text",
    "confidence_interval",
    "headline_markdown",
    "headline_rows",
    "prepare_trials",
    "settings_from_manifest",
    "t_cdf",
    "t_ppf",
    "welch_t_test",
    "write_report",
]
