"""An experiment folder as kdsweep finds it: the space it last ran, its teacher's identity, and its runs on disk.

The folder describes itself, wherever it lies now (a copy, another mount point, a synced bucket):

space.yaml        the space it last ran (overrides applied)
identity.json     {"scheme": 2, "teacher": <identity>, "legacy_ids": {today's id: 0.1 folder}}: the teacher's
                  identity (so it can be reported without the teacher's file) and, for an experiment begun by
                  kdsweep 0.1, which of its run folders hold which of today's runs
runs/<id>/spec.json  the run's spec and the configuration it shares with its experiment (`experiment_context`),
                  so a run the current space no longer names is still known: reported beside the space's own runs
                  when it shares their configuration (a seed or an lr dropped from the axes), listed by
                  `kdsweep status` otherwise (runs of an earlier recipe, dataset or teacher, kept after --replace)

kdsweep 0.1 named run folders by a hash of the teacher's absolute path. Such an experiment has no identity.json;
its space.yaml still holds the locations it ran with, so re-expanding it with 0.1's teacher identity gives each run's
old folder, and re-expanding it with today's gives the run it holds (`legacy_ids`). Nothing is renamed: those runs
keep their folders (their id stays the 0.1 one), new runs get today's ids.
"""

from __future__ import annotations

import dataclasses
import warnings

from kdsweep.engine import RunSpec
from kdsweep.errors import UserError
from kdsweep.space import Space, load_space
from kdsweep.space.expand import expand_runs, experiment_context
from kdsweep.ids import legacy_teacher_identity
from kdsweep.storage import Store

SPACE, IDENTITY, SPEC = "space.yaml", "identity.json", "spec.json"
SCHEME = 2  # 1: kdsweep 0.1's path-hashing ids (no identity.json)


def read_identity(store: Store) -> dict | None:
    """identity.json, or None when there is none (or a damaged one, which the next `kdsweep run` rewrites: without
    it the runs are still found by their ids, only a teacher checkpoint that cannot be read is then unknown)."""
    if not store.exists(IDENTITY):
        return None
    try:
        identity = store.read_json(IDENTITY)
    except ValueError as err:
        warnings.warn(f"{store.location(IDENTITY)} is damaged ({err}); reading the experiment without it")
        return None
    if not isinstance(identity, dict):
        warnings.warn(f"{store.location(IDENTITY)} is damaged (it holds a JSON {type(identity).__name__}, not an "
                      f"object); reading the experiment without it")
        return None
    return identity


class StoredSpaceProblem(UserError):
    """kdsweep's copy of the space an experiment last ran (its space.yaml) cannot be used: damaged, or refused."""

    def __init__(self, store: Store, reason: str):
        self.location, self.reason = store.location(SPACE), reason
        super().__init__(
            f"{self.location}, kdsweep's copy of the space this experiment last ran, cannot be used: {reason}. Give "
            f"your space file instead of the experiment folder (`kdsweep status SPACE.yaml`, `kdsweep run "
            f"SPACE.yaml`); `kdsweep run` writes the copy again."
        )


def load_stored_space(store: Store, overrides: list[str] = (), **load_args) -> Space | None:
    """The experiment's copy of its space (`load_space` with `load_args`), or None when it has none. A copy that
    cannot be read or validated raises StoredSpaceProblem; the `overrides` are applied after that check, so that
    their own problems are reported as the user's."""
    if not store.exists(SPACE):
        return None
    data = store.read_bytes(SPACE)
    try:
        text = data.decode("utf-8")
        space = load_space(store.location(SPACE), text=text, **load_args)
    except UnicodeDecodeError as err:
        raise StoredSpaceProblem(store, f"it is not UTF-8 text (byte {data[err.start]:#04x} at offset "
                                        f"{err.start})") from None
    except UserError as err:
        first = str(err).strip().splitlines()[0]
        reason = "it " + first.removeprefix(f"search space {store.location(SPACE)} ")
        raise StoredSpaceProblem(store, (reason if len(reason) <= 300 else reason[:300] + "...").rstrip(".:")) from None
    return load_space(store.location(SPACE), overrides, text=text, **load_args) if overrides else space


def open_experiment(location: str, overrides: list[str] = (), root: str | None = None) -> tuple[Space, Store]:
    """The space an existing experiment folder (path or URI) last ran, opened where the folder lies now (or, with
    `root`, as an experiment in that folder), with its runs on disk attached (`attach`)."""
    store = Store(location)
    known = (read_identity(store) or {}).get("teacher") if store.exists(SPACE) else None
    space = load_stored_space(store, overrides, root=root or store.root, known_teacher=known)
    if space is None:
        raise UserError(
            f"{store.root} is not a kdsweep experiment (it has no {SPACE}). Give the experiment folder, "
            f"<storage>/<experiment>, that `kdsweep run SPACE.yaml` created."
        )
    return attach(space, Store(space.root)), store


def attach(space: Space, store: Store, legacy: dict[str, str] | None = None) -> Space:
    """`space` with the experiment's 0.1 run folders mapped onto its runs (`legacy`, by default `legacy_ids`) and
    the runs on disk outside it."""
    space = with_ids(space, legacy_ids(space, store) if legacy is None else legacy)
    return dataclasses.replace(space, outside=runs_outside(space, store))


def with_ids(space: Space, ids: dict[str, str]) -> Space:
    """Runs whose today's id is in `ids` take the folder name it maps to."""
    if not ids:
        return space
    runs = tuple(dataclasses.replace(r, run_id=ids[r.run_id]) if r.run_id in ids else r for r in space.runs)
    return dataclasses.replace(space, runs=runs)


def legacy_ids(space: Space, store: Store) -> dict[str, str]:
    """{today's id: kdsweep 0.1 folder} of the experiment's 0.1 runs found on disk ({} for a newer experiment)."""
    identity = read_identity(store)
    if identity is not None:
        return dict(identity.get("legacy_ids") or {})
    # The stored space as 0.1 ran it: its `storage` is the absolute folder it was in then, so the teacher location
    # (a trained teacher's final.pt lies in the experiment) is the one 0.1 hashed.
    # Where its teacher checkpoint is no longer at that location, the current space's teacher stands in for it.
    try:
        then = load_stored_space(store, known_teacher=space.teacher_identity)
    except StoredSpaceProblem:  # scope.compare, run just before, has said so
        return {}
    if then is None:
        return {}
    old = expand_runs(then.file, then.data, legacy_teacher_identity(then.teacher.spec.arch, then.teacher.spec.checkpoint))
    on_disk = set(store.list("runs"))
    return {now.run_id: was.run_id for now, was in zip(then.runs, old) if was.run_id in on_disk}


def runs_outside(space: Space, store: Store) -> tuple[RunSpec, ...]:
    """Runs on disk that the space does not name but whose configuration it shares (their spec.json says so)."""
    return tuple(spec for spec, same in _specs_outside(space, store) if same)


def other_configurations(space: Space, store: Store) -> list[str]:
    """Run folders on disk of another configuration (recipe, dataset, teacher, student), or that no spec.json
    describes (runs of an earlier space of a kdsweep 0.1 experiment): kept, never reported."""
    known = {r.run_id for r in space.runs} | {r.run_id for r in space.outside} | _teacher_folders(space)
    return [name for name in store.list("runs") if name not in known]


def _specs_outside(space: Space, store: Store):
    named = {r.run_id for r in space.runs} | _teacher_folders(space)
    context = experiment_context(space.file, space.data, space.teacher_identity)
    for name in store.list("runs"):
        if name in named or not store.exists(f"runs/{name}/{SPEC}"):
            continue
        try:
            stored = store.read_json(f"runs/{name}/{SPEC}")
            yield RunSpec.from_dict(stored["run"]), stored.get("context") == context
        except (ValueError, KeyError, TypeError):
            continue  # a damaged spec.json: the run is listed as of another configuration


def _teacher_folders(space: Space) -> set[str]:
    return {space.teacher.training_run.run_id} if space.teacher.training_run else set()


def record_identity(space: Space, store: Store, runs, legacy: dict[str, str]) -> None:
    """Under the experiment lock, before training: identity.json, and spec.json of `runs` that lack one."""
    store.write_json(IDENTITY, {"scheme": SCHEME, "teacher": space.teacher_identity, "legacy_ids": legacy})
    context = experiment_context(space.file, space.data, space.teacher_identity)
    for run in runs:
        if not store.exists(f"runs/{run.run_id}/{SPEC}"):
            store.write_json(f"runs/{run.run_id}/{SPEC}", {"run": run.to_dict(), "context": context})
