"""Durable atomic writes (fsync before the rename) and staged preparation output swapped in only when complete."""

import os
from pathlib import Path

import pytest

from medfl.common import io as medfl_io
from medfl.common import staging
from medfl.common.io import atomic_write_json, temporary_name
from medfl.common.staging import StagedOutput, remove_leftovers


def tree(root: Path) -> dict:
    """Every file and folder under ``root`` (hidden ones too) with the bytes of each file."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "folder") for p in sorted(root.rglob("*"))}


def previous_output(root: Path) -> dict:
    (root / "site_a").mkdir(parents=True)
    (root / "site_a" / "x.txt").write_text("old a")
    (root / "lists").mkdir()
    (root / "lists" / "site_a.json").write_text("old list")
    return tree(root)


def test_atomic_path_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = medfl_io.fsync_path, os.replace
    monkeypatch.setattr(medfl_io, "fsync_path", lambda path: (events.append(("fsync", Path(path))),
                                                              real_fsync(path)))
    monkeypatch.setattr(medfl_io.os, "replace", lambda a, b: (events.append(("replace", Path(a), Path(b))),
                                                              real_replace(a, b)))
    target = tmp_path / "state.json"
    atomic_write_json({"round": 3}, target)
    assert len(events) == 3
    (kind0, tmp), replace, (kind2, folder) = events
    assert (kind0, kind2, folder) == ("fsync", "fsync", tmp_path)
    assert replace == ("replace", tmp, target) and tmp.name.startswith(".tmp.") and tmp.name.endswith(".state.json")
    assert target.read_text() == '{\n  "round": 3\n}\n'


def test_commit_swaps_folders_and_files_in_staging_order(tmp_path, monkeypatch):
    previous_output(tmp_path)
    order = []
    real_replace = os.replace
    with StagedOutput() as staged:
        folder = staged.folder(tmp_path / "site_a")
        (folder / "y.txt").write_text("new a")
        staged.file(tmp_path / "lists" / "site_a.json").write_text("new list")
        staged.write_json({"sites": ["a"]}, tmp_path / "lists" / "all.json")
        assert (tmp_path / "site_a" / "x.txt").read_text() == "old a", "nothing changes before the block ends"
        monkeypatch.setattr(staging.os, "replace", lambda a, b: (order.append(Path(b).name), real_replace(a, b)))
    assert order == ["site_a", "site_a.json", "all.json"]
    assert tree(tmp_path) == {"lists": "folder", "lists/all.json": b'{\n  "sites": [\n    "a"\n  ]\n}\n',
                              "lists/site_a.json": b"new list", "site_a": "folder", "site_a/y.txt": b"new a"}


def test_an_error_inside_the_block_leaves_the_previous_output_exactly(tmp_path):
    before = previous_output(tmp_path)
    with pytest.raises(RuntimeError, match="corrupt case"):
        with StagedOutput() as staged:
            (staged.folder(tmp_path / "site_a") / "y.txt").write_text("new a")
            staged.write_json({}, tmp_path / "lists" / "site_a.json")
            staged.folder(tmp_path / "new_site" / "deep")
            raise RuntimeError("corrupt case")
    assert tree(tmp_path) == before, "temporary versions and the folders made for them are gone"


def test_a_failing_swap_undoes_the_swaps_already_made(tmp_path, monkeypatch):
    before = previous_output(tmp_path)
    real_replace, calls = os.replace, []

    def replace_then_fail(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(a, b)

    staged = StagedOutput()
    (staged.folder(tmp_path / "site_a") / "y.txt").write_text("new a")
    staged.write_json({}, tmp_path / "lists" / "site_a.json")
    monkeypatch.setattr(staging.os, "replace", replace_then_fail)
    with pytest.raises(OSError, match="No space left"):
        staged.commit()
    monkeypatch.setattr(staging.os, "replace", real_replace)
    assert tree(tmp_path) == before


def test_leftovers_of_a_killed_run_are_removed_and_a_moved_away_folder_is_restored(tmp_path):
    before = previous_output(tmp_path)
    half_built = temporary_name(tmp_path / "site_a")
    half_built.mkdir()
    (half_built / "y.txt").write_text("half")
    temporary_name(tmp_path / "lists" / "site_a.json").write_text("{")
    replaced = temporary_name(tmp_path / "site_b", staging.PREVIOUS_PREFIX)  # kill after the new site_b moved in
    replaced.mkdir()
    (tmp_path / "site_b").mkdir()
    moved_away = temporary_name(tmp_path / "site_c", staging.PREVIOUS_PREFIX)  # kill before the new site_c moved in
    moved_away.mkdir()
    (moved_away / "z.txt").write_text("old c")
    assert len(remove_leftovers(tmp_path)) == 3 and len(remove_leftovers(tmp_path / "lists")) == 1
    assert tree(tmp_path) == {**before, "site_b": "folder", "site_c": "folder", "site_c/z.txt": b"old c"}


def test_staging_a_target_cleans_its_folder_first(tmp_path):
    leftover = temporary_name(tmp_path / "lists" / "site_x.json")
    leftover.parent.mkdir()
    leftover.write_text("{")
    with StagedOutput() as staged:
        staged.write_json({}, tmp_path / "lists" / "site_a.json")
    assert sorted(p.name for p in (tmp_path / "lists").iterdir()) == ["site_a.json"]
