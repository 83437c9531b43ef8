"""Experiment storage: atomic writes, local paths and URIs behind one API."""

import os

import pytest

from kdsweep.errors import UserError
from kdsweep.storage import Store, absolute_location


def test_a_write_interrupted_before_the_rename_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.write_bytes("trials.parquet", b"old complete table")

    def killed(*args):  # the process dies between writing the temporary file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_bytes("trials.parquet", b"new table")
    monkeypatch.undo()
    assert store.read_bytes("trials.parquet") == b"old complete table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.parquet"]


def test_local_and_uri_stores_behave_alike(tmp_path):
    local = Store(str(tmp_path / "exp"))
    uri = Store(f"file://{tmp_path}/exp")
    local.write_json("runs/a/progress.json", {"epochs_done": 3})
    assert uri.read_json("runs/a/progress.json") == {"epochs_done": 3}
    uri.write_bytes("runs/b/final.pt", b"weights")
    assert local.read_bytes("runs/b/final.pt") == b"weights"
    for store in (local, uri):
        assert store.list("runs") == ["a", "b"] and store.list("missing") == []
        assert store.exists("runs/b/final.pt") and not store.exists("runs/c")
    uri.delete("runs/b/final.pt")
    assert not local.exists("runs/b/final.pt")
    assert uri.local_path() is None and local.local_path() == tmp_path / "exp"
    assert uri.location("x.json") == f"file://{tmp_path}/exp/x.json"


def test_unwritable_locations_name_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = Store(str(blocker / "exp"))
    with pytest.raises(UserError, match=f"cannot write {blocker}/exp/manifest.json: "):
        store.write_json("manifest.json", {})


def test_relative_locations_are_made_absolute(tmp_path):
    assert absolute_location("results", tmp_path) == str(tmp_path / "results")
    assert absolute_location("s3://bucket/prefix/") == "s3://bucket/prefix"
