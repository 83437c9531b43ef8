"""Reading a run's `progress.json`: checked for shape, and a damaged one replaced by the record its newest good
checkpoint carries.

Policy (README, "What happens when things go wrong"): a record that is not JSON, not an object, or whose fields have
the wrong types is *damaged*. The run's checkpoints hold a copy of the record as of their epoch, so a damaged record
is rebuilt from the newest checkpoint whose checksum verifies (a finished run stays finished: its last checkpoint is
written after its last epoch); a run with no good checkpoint is treated as never started and trains again. Either
way a warning names the file and what was wrong. Nothing here raises for damage: `status` and `report` show what
they can.
"""

from __future__ import annotations

import json
import warnings

from kdsweep.engine.checkpoint import CheckpointDir
from kdsweep.engine.records import STATUSES, RunRecord
from kdsweep.storage import Store

RECORD = "progress.json"

# field -> (accepted types, may be None); fields not listed are taken as they are or left at their defaults.
_FIELDS = {
    "run_id": ((str,), False), "group_id": ((str,), False), "epochs": ((int,), False),
    "status": ((str,), False), "epochs_done": ((int,), False), "best_acc": ((int, float), True),
    "best_epoch": ((int,), True), "last_acc": ((int, float), True), "wall_s": ((int, float), False),
    "history": ((list,), False), "resumed_from": ((list,), False), "checkpoint": ((dict,), True),
    "execution": ((dict,), True),
}


def record_problem(data: bytes, run_id: str) -> tuple[str | None, RunRecord | None]:
    """(what is wrong, None) for damaged `progress.json` content, else (None, the record)."""
    try:
        d = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        return f"is not JSON ({getattr(err, 'msg', None) or type(err).__name__})", None
    if not isinstance(d, dict):
        return f"holds a JSON {type(d).__name__}, not an object", None
    for name, (types, nullable) in _FIELDS.items():
        if name not in d:
            if name in ("run_id", "group_id", "epochs", "status"):
                return f"lacks `{name}`", None
            continue
        value = d[name]
        if value is None and nullable:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            return f"has `{name}`: {json.dumps(value)[:40]}, expected {' or '.join(t.__name__ for t in types)}", None
    if d["status"] not in STATUSES:
        return f"has status {json.dumps(d['status'])[:40]}, expected one of {', '.join(STATUSES)}", None
    if d["run_id"] != run_id:
        return f"belongs to run {d['run_id'][:80]!r}, not {run_id!r}", None
    if not all(isinstance(e, dict) and isinstance(e.get("epoch"), int) and isinstance(e.get("test_acc"), (int, float))
               for e in d.get("history", [])):
        return "has a history entry without an integer `epoch` and a numeric `test_acc`", None
    return None, RunRecord.from_dict(d)


def read_record(store: Store, run_id: str, repair: bool = False) -> RunRecord | None:
    """The run's record; None when it never started (or is damaged with no good checkpoint to rebuild it from).
    With `repair`, a rebuilt record is written back, so that the damage is reported once."""
    name = f"runs/{run_id}/{RECORD}"
    if not store.exists(name):
        return None
    problem, record = record_problem(store.read_bytes(name), run_id)
    if problem is None:
        return record
    state = CheckpointDir(store, f"runs/{run_id}/checkpoints").load_latest()
    location = store.location(name)
    if state is None:
        warnings.warn(f"run record {location} {problem}; the run has no good checkpoint, so it trains again from "
                      f"the start")
        if repair:
            store.delete(name)
        return None
    record = RunRecord.from_dict(state["record"])
    warnings.warn(f"run record {location} {problem}; rebuilt from its checkpoint after epoch {record.epochs_done}")
    if repair:
        store.write_json(name, record.to_dict())
    return record
