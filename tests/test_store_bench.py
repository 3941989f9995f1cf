"""Benchmarks through the results store: a bench's --json output (rows, setting, provenance) is stored
idempotently and rendered to a page that shows the rows as the bench printed them, the ratios a page
asks for computed from the stored rows, and the commit, machine, load and command of the measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from peftlab.errors import ConfigError
from peftlab.report import main as report_main
from peftlab.reporting.pages import render
from peftlab.reporting.store import BENCH, add_bench, read_benches
from peftlab.reporting.vs_trainer.__main__ import main as vs_trainer_main

BENCH_ARGS = [
    *("--model", "tiny_bert", "--steps", "2", "--rounds", "1", "--warmup", "1", "--batch-size", "4"),
    *("--ref", "lora", "--row", "lora method=lora", "--row", "head method=head"),
]
PAGE = """
page: tiny-bench.md
title: Tiny bench
store: python -m peftlab.report add-bench FILE --study tiny
benches:
  - title: Steps
    kind: bench
    ratios:
      - {claim: head within 5x of LoRA, a: head, b: lora, at_most: 5.0}
      - {claim: head within 0.001x of LoRA, a: head, b: lora, at_most: 0.001}
  - title: Loops
    kind: vs_trainer
"""


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The --json files of a 2-step bench of LoRA and head and of a 2-step vs_trainer, tiny BERT."""
    folder = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        str(ROOT / "scripts" / "bench.py"),
        *BENCH_ARGS,
        "--json",
        str(folder / "b.json"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    vs_trainer_main(
        [*("--model", "tiny_bert", "--train-samples", "16", "--batch-size", "8", "--max-length", "32")]
        + ["--steps", "2", "--json", str(folder / "v.json")]
    )
    return folder / "b.json", folder / "v.json"


def test_bench_json_is_plain_data_with_provenance(measured):
    bench, loops = (json.loads(p.read_text()) for p in measured)
    assert bench["kind"] == "bench" and [r["row"] for r in bench["rows"]] == ["lora", "head"]
    assert loops["kind"] == "vs_trainer" and [r["loop"] for r in loops["rows"]][0] == "peftlab"
    for data, script in ((bench, "python scripts/bench.py --model tiny_bert"), (loops, "python -m peftlab.")):
        prov = data["provenance"]
        assert prov["command"].startswith(script) and prov["cpu_cores"] >= 1 and prov["torch_threads"] >= 1
        assert len(prov["load_average"]) == 3 and prov["date"]


def test_a_stored_bench_renders_its_rows_ratios_and_stamp(measured, tmp_path):
    for path in measured:
        assert len(add_bench(path, "tiny", tmp_path).written) == 1
    (tmp_path / "tiny" / "page.yaml").write_text(PAGE)
    name, text = render(tmp_path / "tiny")
    bench, loops = (
        {b["kind"]: b for b in read_benches(tmp_path / "tiny")}[k] for k in ("bench", "vs_trainer")
    )
    lora, head = bench["rows"]
    assert name == "tiny-bench.md"
    assert f"| lora | {lora['trainable_params']:,} | {1000 * lora['step_s']:.0f} |" in text
    assert f"| head | {head['trainable_params']:,} | {1000 * head['step_s']:.0f} |" in text
    ratio = head["step_s"] / lora["step_s"]
    assert f"| head within 5x of LoRA | head / lora | step_s | {ratio:.2f} | <= 5.0 | met |" in text
    assert f"| head within 0.001x of LoRA | head / lora | step_s | {ratio:.2f} | <= 0.001 | not met |" in text
    first = loops["rows"][0]
    assert f"| peftlab | {first['epoch_s']:.2f} | {first['ratio']:.2f} |" in text
    assert bench["provenance"]["command"] in text and loops["provenance"]["command"] in text
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert commit.stdout.strip()[:10] in text and "load average (1, 5, 15 min)" in text


def test_adding_a_bench_again_rewrites_nothing_and_a_remeasurement_needs_replace(measured, tmp_path):
    path = measured[0]
    add_bench(path, "tiny", tmp_path)
    stored = next((tmp_path / "tiny" / BENCH).glob("*.json"))
    before = stored.stat().st_mtime_ns
    assert len(add_bench(path, "tiny", tmp_path).unchanged) == 1 and stored.stat().st_mtime_ns == before
    data = json.loads(path.read_text())
    data["provenance"]["date"] = "2099-01-01T00:00:00+00:00"  # the same command measured again
    again = tmp_path / "again.json"
    again.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="already holds a measurement"):
        add_bench(again, "tiny", tmp_path)
    done = add_bench(again, "tiny", tmp_path, replace=True)
    assert done.replaced == [stored] and [p.name for p in (tmp_path / "tiny" / BENCH).glob("*")] == [
        "bench-20990101T000000.json"
    ]


def test_report_add_bench_and_check(measured, tmp_path):
    store, out = tmp_path / "store", tmp_path / "pages"
    assert report_main(["--store", str(store), "add-bench", *map(str, measured), "--study", "tiny"]) == 0
    (store / "tiny" / "page.yaml").write_text(PAGE)
    assert report_main(["--store", str(store), "--out", str(out)]) == 0
    assert report_main(["--store", str(store), "--out", str(out), "--check"]) == 0
    page = out / "tiny-bench.md"
    page.write_text(page.read_text().replace("| lora |", "| LoRA |"))
    assert report_main(["--store", str(store), "--out", str(out), "--check"]) == 1
    not_a_bench = tmp_path / "x.json"
    not_a_bench.write_text("{}")
    assert report_main(["--store", str(store), "add-bench", str(not_a_bench), "--study", "tiny"]) == 2


def test_vs_trainer_takes_its_provenance_before_it_measures(monkeypatch, tmp_path):
    """The commit stamped is the code that ran, not whatever the checkout holds when the run ends."""
    import peftlab.reporting.vs_trainer.__main__ as command

    order = []
    monkeypatch.setattr(
        command, "bench_provenance", lambda cmd: order.append("provenance") or {"command": cmd}
    )
    monkeypatch.setattr(command, "compare", lambda settings: order.append("measure"))
    monkeypatch.setattr(command, "render", lambda *a: "")
    monkeypatch.setattr(command, "bench_json", lambda report, prov: {**prov, "order": list(order)})
    command.main(["--steps", "1", "--json", str(tmp_path / "v.json")])
    assert json.loads((tmp_path / "v.json").read_text())["order"] == ["provenance", "measure"]
