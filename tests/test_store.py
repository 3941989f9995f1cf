"""The results store and its pages: a summary per finished run, added idempotently and read like the
run folder it came from; pages generated from it carry the runs' commit, machine and command; the
committed pages are what the committed store generates."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import ROOT, cli

from peftlab.errors import ConfigError
from peftlab.report import main as report_main
from peftlab.report import stale_pages
from peftlab.reporting.pages import render, write_pages
from peftlab.reporting.results import find_runs, find_summaries, read_summary
from peftlab.reporting.stats import describe, paired
from peftlab.reporting.store import add
from peftlab.run.provenance import git_state, provenance

SWEEP = [
    *("-m", "model=tiny_bert", "schedule=quick", "schedule.max_steps=4", "schedule.eval_every_steps=2"),
    *("task.max_train_samples=16", "task.max_eval_samples=8", "progress_bar=false", "curves=false"),
    *("save_adapter=false", "method=head,lora", "seed=1,2"),
]
PAGE = """
page: tiny.md
title: Tiny study
about: head vs LoRA on a random tiny BERT.
run: python -m peftlab SWEEP
store: python -m peftlab.report add SWEEP --study tiny
tables:
  - title: RTE
    rows: [method.name]
    order: [lora, head]
    columns: [final, best, params, seeds]
comparisons:
  - claim: LoRA above head
    a: {method.name: lora}
    b: {method.name: head}
    direction: greater
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four finished jobs (head and LoRA, seeds 1 and 2) of a tiny multirun."""
    folder = tmp_path_factory.mktemp("sweep")
    done = cli(*SWEEP, f"hydra.sweep.dir={folder}")
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def test_add_stores_one_summary_per_run_and_is_idempotent(sweep, tmp_path):
    done = add(sweep, "tiny", tmp_path)
    assert len(done.written) == 4 and not done.skipped
    files = sorted((tmp_path / "tiny").glob("*.json"))
    before = {p: (p.read_text(), p.stat().st_mtime_ns) for p in files}
    again = add(sweep, "tiny", tmp_path)
    assert not again.written and len(again.unchanged) == 4
    assert {p: (p.read_text(), p.stat().st_mtime_ns) for p in files} == before  # nothing rewritten
    assert not list((tmp_path / "tiny").glob(".*.tmp"))


def test_a_summary_reads_like_its_run_folder(sweep, tmp_path):
    add(sweep, "tiny", tmp_path)
    folders = {r.get("run_id"): r for r in find_runs(sweep)}
    for stored in find_summaries(tmp_path / "tiny"):
        run = folders[stored.get("run_id")]
        assert stored.path.name == f"{run.get('run_id')}.json"
        for select in ("final", "best"):
            assert stored.percent(select=select) == run.percent(select=select)
        assert stored.params() == run.params() and stored.settings() == run.settings()
        assert stored.provenance == run.results["provenance"]
        evals = stored.results["evals"]
        assert [e["step"] for e in evals] == [2, 4] and evals[-1]["metrics"] == run.results["final_eval"]
        assert "adapter" not in stored.results and len(stored.path.read_bytes()) < 20_000


def test_a_rerun_of_a_stored_job_needs_replace(sweep, tmp_path):
    add(sweep, "tiny", tmp_path)
    rerun = tmp_path / "rerun" / "job"
    shutil.copytree(next(sweep.glob("0_*")), rerun)
    config = (rerun / "config.yaml").read_text()
    run_id = read_summary(next((tmp_path / "tiny").glob("*.json"))).get("run_id")
    old_id = next(line.split()[1] for line in config.splitlines() if line.startswith("run_id:"))
    (rerun / "config.yaml").write_text(config.replace(old_id, "f" * 32))
    with pytest.raises(ConfigError, match="already holds this job"):
        add(rerun, "tiny", tmp_path)
    done = add(rerun, "tiny", tmp_path, replace=True)
    assert len(done.replaced) == 1 and done.written == [tmp_path / "tiny" / f"{'f' * 32}.json"]
    assert len(list((tmp_path / "tiny").glob("*.json"))) == 4 and run_id


def test_unfinished_runs_are_left_out(sweep, tmp_path):
    broken = tmp_path / "broken" / "job"
    shutil.copytree(next(sweep.glob("1_*")), broken)
    results = json.loads((broken / "results.json").read_text())
    (broken / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    done = add(broken.parent, "tiny", tmp_path)
    assert not done.written and done.skipped == [f"{broken} (interrupted)"]


def test_a_page_shows_the_stored_numbers_and_where_they_come_from(sweep, tmp_path):
    add(sweep, "tiny", tmp_path)
    (tmp_path / "tiny" / "page.yaml").write_text(PAGE)
    name, text = render(tmp_path / "tiny")
    runs = find_summaries(tmp_path / "tiny")
    by_method = {m: [r for r in runs if r.get("method.name") == m] for m in ("head", "lora")}
    for method, found in by_method.items():
        final = describe([r.percent() for r in found]).text()
        assert f"| {method} | {final} |" in text
    lora, head = ({r.get("seed"): r.percent() for r in by_method[m]} for m in ("lora", "head"))
    assert paired(lora, head).text() in text
    assert text.index("| lora |") < text.index("| head |")  # the page's order
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert commit.stdout.strip()[:10] in text and "4 runs;" in text
    assert "- page: `python -m peftlab.report`" in text and "python -m peftlab -m model=tiny_bert" in text
    assert name == "tiny.md"


def test_report_check_finds_a_stale_or_hand_edited_page(sweep, tmp_path):
    store, out = tmp_path / "store", tmp_path / "pages"
    assert report_main(["--store", str(store), "add", str(sweep), "--study", "tiny"]) == 0
    (store / "tiny" / "page.yaml").write_text(PAGE)
    assert report_main(["--store", str(store), "--out", str(out)]) == 0
    assert report_main(["--store", str(store), "--out", str(out), "--check"]) == 0
    page = out / "tiny.md"
    page.write_text(page.read_text().replace("| lora |", "| LoRA |"))
    assert stale_pages(store, out) == ["tiny.md"]
    assert report_main(["--store", str(store), "--out", str(out), "--check"]) == 1


def test_the_committed_pages_are_what_the_committed_store_generates(tmp_path):
    fresh = write_pages(ROOT / "results", tmp_path)
    assert fresh, "no page.yaml under results/"
    for page in fresh:
        committed = ROOT / "docs" / "results" / page.name
        assert committed.exists(), f"{committed} is missing: run python -m peftlab.report"
        assert committed.read_text() == page.read_text(), (
            f"{committed} is stale: run python -m peftlab.report"
        )


def test_provenance_names_the_checkout_and_nothing_outside_git(tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert git_state(ROOT)["git_commit"] == head.stdout.strip()
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}
    record = provenance()
    assert record["cpu_cores"] >= 1 and record["command"].startswith("python -m peftlab")


def test_a_page_definition_that_is_not_yaml_is_one_line_naming_the_file(tmp_path, caplog):
    study = tmp_path / "store" / "tiny"
    study.mkdir(parents=True)
    (study / "page.yaml").write_text("page: tiny.md\nstore: add x (the rest: add y)\nrun: a: b\n")
    with caplog.at_level("ERROR"):
        assert report_main(["--store", str(tmp_path / "store"), "--out", str(tmp_path / "pages")]) == 2
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"error: {study / 'page.yaml'}: not valid YAML (mapping values are not allowed")
