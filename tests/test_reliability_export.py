"""``python -m peftlab.export --out DIR`` never deletes what is not a previous export: a folder of other
files, the run folder and a folder above it are refused with one line (exit 2) and left as they were; a
previous export is replaced only with ``--force``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config

from peftlab.export import main
from peftlab.run.experiment import run_experiment


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder of runs holding one completed run (a trained head: the quickest to export)."""
    root = tmp_path_factory.mktemp("runs")
    overrides = ["task=rte", "method=head", "schedule.max_steps=2", "measure.flops=false"]
    run_experiment(tiny_config(root / "run", *overrides))
    (root / "other_run").mkdir()
    (root / "other_run" / "results.json").write_text("{}")
    return root


def files_under(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def refused(capsys, run, out, *extra):
    code = main([str(run), "--to", "merged", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and str(out) in err
    return err


def test_a_folder_of_other_files_is_refused_and_kept(runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    err = refused(capsys, runs / "run", mine)
    assert "not a peftlab export" in err and "new or empty folder" in err
    err = refused(capsys, runs / "run", mine, "--force")  # --force replaces only a previous export
    assert (mine / "notes.txt").read_text() == "my notes" and files_under(mine) == [Path("notes.txt")]


@pytest.mark.parametrize("where", ["run", "parent"])
def test_the_run_folder_and_a_folder_above_it_are_refused(runs, capsys, where):
    out = runs / "run" if where == "run" else runs
    before = files_under(runs)
    for extra in ([], ["--force"]):  # refused always
        assert "is the run folder or holds it" in refused(capsys, runs / "run", out, *extra)
    assert files_under(runs) == before and (runs / "other_run" / "results.json").exists()


def test_a_previous_export_is_replaced_only_with_force(runs, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main([str(runs / "run"), "--to", "merged", "--out", str(out)]) == 0
    assert json.loads((out / "export.json").read_text())["peftlab_export"] == 1
    capsys.readouterr()  # the first export's progress lines
    (out / "stale.txt").write_text("from an earlier export")
    err = refused(capsys, runs / "run", out)
    assert "previous export" in err and "--force" in err
    assert (out / "stale.txt").exists()
    assert main([str(runs / "run"), "--to", "merged", "--out", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "export.json").exists()
