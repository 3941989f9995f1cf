"""Result pages generated from the store: ``results/<study>/page.yaml`` says what the page shows (its
tables' rows, columns and filters, the paired comparisons of claims, the paper tables beside ours);
``render`` turns it and the study's run summaries into markdown. Every table is stamped with the
commits, machine, dates and commands of its runs and the command that wrote the page, so a page is
never typed by hand and a test can regenerate it to prove it current.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from peftlab.errors import ConfigError
from peftlab.reporting.markdown import table as markdown_table
from peftlab.reporting.paper_tables import get_table
from peftlab.reporting.results import Run, find_summaries
from peftlab.reporting.stats import describe, paired
from peftlab.reporting.store import read_benches
from peftlab.reporting.tables import matches, paper_comparison
from peftlab.run.folder import write_text_atomic

PAGE = "page.yaml"
PAGES = Path("docs/results")
COMMAND = "python -m peftlab.report"
PAGE_KEYS = {"page", "title", "about", "run", "store", "tables", "comparisons", "paper_tables", "benches"}


def _values(runs: list[Run], select: str) -> list[float]:
    return [v for v in (r.percent(select=select) for r in runs) if v is not None]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _cell(select: str) -> Callable[[list[Run]], str]:
    def text(runs: list[Run]) -> str:
        values = _values(runs, select)
        return describe(values).text() if values else ""

    return text


def _median(runs: list[Run]) -> str:
    values = _values(runs, "final")
    return f"{describe(values).median:.2f}" if values else ""


def _number(read: Callable[[Run], Any], scale: float, fmt: str) -> Callable[[list[Run]], str]:
    """The mean over seeds of one results.json number, scaled and formatted ("" when none has it)."""

    def text(runs: list[Run]) -> str:
        value = _mean([None if read(r) is None else read(r) * scale for r in runs])
        return "" if value is None else format(value, fmt)

    return text


# column name -> (header, cell of a row's runs)
COLUMNS: dict[str, tuple[str, Callable[[list[Run]], str]]] = {
    "final": ("final eval, mean ± std [95% CI]", _cell("final")),
    "best": ("best eval, mean ± std [95% CI]", _cell("best")),
    "median": ("final, median", _median),
    "baseline": ("majority class", _number(lambda r: r.baseline_percent(), 1.0, ".2f")),
    "params": ("trainable params (mean over steps)", _number(lambda r: r.params(), 1.0, ",.0f")),
    "adapter_params": ("adapter params (no head)", _number(lambda r: r.params(adapter=True), 1.0, ",.0f")),
    "step_time": ("median step (ms)", _number(lambda r: r.results.get("median_step_time_s"), 1e3, ".1f")),
    "eval_time": ("final eval (s)", _number(lambda r: r.results.get("final_eval_time_s"), 1.0, ".2f")),
    "train_time": ("train time (s)", _number(lambda r: r.results.get("train_time_s"), 1.0, ".1f")),
    "wall_time": ("wall time (s)", _number(lambda r: r.results.get("wall_time_s"), 1.0, ".1f")),
    "memory": ("peak memory (MiB)", _number(lambda r: r.results.get("peak_memory_bytes"), 2**-20, ".0f")),
    "flops": ("GFLOP per step", _number(lambda r: r.results.get("flops_per_step"), 1e-9, ".2f")),
    "seeds": ("seeds", lambda runs: ", ".join(str(r.get("seed")) for r in runs)),
}


REPORT = "report."  # a column ``report.<key>``: the mean over seeds of that key of the method's report


def column(name: str) -> tuple[str, Callable[[list[Run]], str]]:
    """A column's header and cell: a named one, or ``report.<key>`` (a number the method reports, such as
    when its freezing ended), shown as the mean over the row's runs ("" where a method reports none)."""
    if not name.startswith(REPORT):
        return COLUMNS[name]
    key = name[len(REPORT) :]
    return f"{key} (mean)", _number(lambda r: (r.results.get("method_report") or {}).get(key), 1.0, ",.1f")


def read_page(study_dir: Path) -> dict[str, Any]:
    """The study's page definition, with its keys checked."""
    try:
        spec = yaml.safe_load((study_dir / PAGE).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{study_dir / PAGE}: not valid YAML ({' '.join(str(err).split())})") from None
    unknown = set(spec) - PAGE_KEYS
    if unknown or "page" not in spec or "title" not in spec:
        raise ConfigError(f"{study_dir / PAGE}: needs page and title; unknown keys {sorted(unknown)}")
    for spec_table in spec.get("tables", []):
        bad = [c for c in spec_table.get("columns", []) if c not in COLUMNS and not c.startswith(REPORT)]
        if bad:
            raise ConfigError(
                f"{study_dir / PAGE}: columns {bad}; known: {', '.join(COLUMNS)}, {REPORT}<method report key>"
            )
    return spec


def _seed(run: Run) -> int:
    seed = run.get("seed")
    return seed if isinstance(seed, int) else -1


def group(runs: list[Run], keys: list[str], order: list[Any] | None) -> list[tuple[tuple, list[Run]]]:
    """Runs by the values of ``keys``; rows in ``order`` (of the first key's values), else sorted."""
    rows: dict[tuple, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (_seed(r), r.path.name)):
        rows.setdefault(tuple(run.get(k) for k in keys), []).append(run)
    rank = {v: i for i, v in enumerate(order or [])}
    return sorted(rows.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), [str(v) for v in kv[0]]))


def stamp(runs: list[Run], spec: dict[str, Any]) -> list[str]:
    """Where the runs come from: commits, machine, dates, total time, and the commands."""
    prov = [r.provenance for r in runs]
    commits = sorted(
        {(p.get("git_commit") or "not recorded")[:10] + ("+dirty" * bool(p.get("git_dirty"))) for p in prov}
    )
    machines = sorted(
        {f"{p.get('cpu_model')}, {p.get('cpu_cores')} cores, {p.get('torch_threads')} threads" for p in prov}
    )
    dates = sorted(p.get("date") or "" for p in prov)
    wall = sum(r.results.get("wall_time_s") or 0.0 for r in runs)
    lines = [
        f"{len(runs)} runs; commit {', '.join(commits)}; machine {'; '.join(machines)}; "
        f"dates {_when(dates[0])} .. {_when(dates[-1])} UTC; wall time of all runs {wall / 60:.1f} min.",
        "",
    ]
    recorded = sorted({p.get("command") for p in prov if p.get("command")})
    lines += [f"- runs: `{spec['run']}`" if spec.get("run") else "- runs: (no command given)"]
    lines += [f"- recorded command of the runs: `{c}`" for c in recorded]
    if spec.get("store"):
        lines.append(f"- stored: `{spec['store']}`")
    lines.append(f"- page: `{COMMAND}`")
    return lines


def _when(date: str) -> str:
    return date[:16].replace("T", " ") if date else "not recorded"


def render_table(spec_table: dict[str, Any], runs: list[Run], spec: dict[str, Any]) -> list[str]:
    keys, columns = spec_table.get("rows", ["method.name"]), spec_table.get("columns", ["final"])
    chosen = [r for r in runs if matches(r, spec_table.get("filter", {}))]
    if not chosen:
        return [f"## {spec_table['title']}", "", "No stored run matches this table yet.", ""]
    rows = [
        [*(str(v) for v in values), *(column(c)[1](found) for c in columns)]
        for values, found in group(chosen, keys, spec_table.get("order"))
    ]
    headers = [*keys, *(column(c)[0] for c in columns)]
    metrics = sorted({f"{r.metric_name()} (%)" for r in chosen})
    lines = [f"## {spec_table['title']}", "", f"Metric: {', '.join(metrics)} on the dev split.", ""]
    lines += markdown_table(headers, rows, "l" * len(keys) + "r" * len(columns))
    return [*lines, "", *stamp(chosen, spec), ""]


def _per_seed(runs: list[Run], claim: dict[str, Any], side: str) -> dict[int, float]:
    """A claim's side as {seed: percent}; with ``average_over`` (e.g. ``task.name``) the mean over those
    values per seed, for the seeds that have a run at every one of them (a paper's "on average")."""
    select, over = claim.get("select", "final"), claim.get("average_over")
    chosen = [r for r in runs if matches(r, claim[side]) and r.percent(select=select) is not None]
    if not over:
        return {r.get("seed"): r.percent(select=select) for r in chosen}
    every = {r.get(over) for r in runs if matches(r, claim["a"]) or matches(r, claim["b"])}
    by_seed: dict[int, dict[Any, float]] = {}
    for r in chosen:
        by_seed.setdefault(r.get("seed"), {})[r.get(over)] = r.percent(select=select)
    return {seed: statistics.fmean(v.values()) for seed, v in by_seed.items() if set(v) == every}


def render_comparisons(comparisons: list[dict[str, Any]], runs: list[Run]) -> list[str]:
    """One line per claim: the paired difference over common seeds, its 95% t interval, the verdict."""
    rows = []
    for claim in comparisons:
        a, b = (_per_seed(runs, claim, side) for side in "ab")
        result = (
            paired(a, b, claim.get("direction", "greater")).text()
            if a.keys() & b.keys()
            else "no common seed"
        )
        over = f", mean over {claim['average_over']}" if claim.get("average_over") else ""
        rows.append(
            [claim["claim"], claim.get("select", "final") + over, str(len(a.keys() & b.keys())), result]
        )
    headers = ["claim (a vs b)", "eval", "paired seeds", "a - b [95% CI]: verdict"]
    return ["## Claims, paired over seeds", "", *markdown_table(headers, rows, "llrl"), ""]


def render(study_dir: Path) -> tuple[str, str]:
    """The page's file name and its markdown."""
    spec, runs = read_page(study_dir), [r for r in find_summaries(study_dir) if r.completed]
    lines = [
        f"# {spec['title']}",
        "",
        f"<!-- generated by `{COMMAND}` from {study_dir.name}/ of the results store: do not edit -->",
        "",
    ]
    if spec.get("about"):
        lines += [spec["about"].strip(), ""]
    for spec_table in spec.get("tables", []):
        lines += render_table(spec_table, runs, spec)
    if spec.get("comparisons"):
        lines += render_comparisons(spec["comparisons"], runs)
    for name in spec.get("paper_tables", []):
        lines += [f"## Beside the paper: {name}", "", paper_comparison(get_table(name), runs), ""]
    benches = read_benches(study_dir) if spec.get("benches") else []
    for spec_bench in spec.get("benches", []):
        lines += render_bench(spec_bench, benches, spec)
    return spec["page"], "\n".join(lines).rstrip() + "\n"


def write_pages(store: Path, out: Path) -> list[Path]:
    """Every study's page of ``store`` (those with a page.yaml) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for page in sorted(Path(store).glob(f"*/{PAGE}")):
        name, text = render(page.parent)
        write_text_atomic(out / name, text)
        written.append(out / name)
    return written


# a benchmark's columns as its command prints them: (key in a row, header, scale, format); "{ref}" in a
# header is the reference row's label
BENCH_COLUMNS: dict[str, list[tuple[str, str, float, str]]] = {
    "bench": [
        *(
            ("row", "row", 1, ""),
            ("trainable_params", "trainable", 1, ",d"),
            ("step_s", "step ms", 1e3, ".0f"),
        ),
        *(("samples_per_s", "samples/s", 1, ".0f"), ("time_ratio", "time / {ref}", 1, ".3f")),
        *(("flops_per_step", "GFLOP/step", 1e-9, ".1f"), ("flops_ratio", "FLOPs / {ref}", 1, ".3f")),
        *(("gflops_per_s", "GFLOP/s", 1, ".0f"), ("fraction_of_ceiling", "% of ceiling", 100, ".0f")),
        *(("precision", "precision", 1, ""), ("padding", "pad %", 100, ".0f")),
        *(("train_memory_bytes", "train mem MB", 2**-20, ".0f"), ("memory_ratio", "mem / {ref}", 1, ".3f")),
        ("memory_detail", "memory detail", 1, ""),
    ],
    "vs_trainer": [
        *(("loop", "loop", 1, ""), ("epoch_s", "epoch s", 1, ".2f"), ("ratio", "ratio vs Trainer", 1, ".2f")),
        *(("samples_per_s", "samples/s", 1, ".1f"), ("metrics", "dev metric", 100, ".1f")),
        *(("ceiling_pct", "% of ceiling", 1, ".1f"), ("step_ms", "median step ms", 1, ".1f")),
        *(("first_loss", "first-step loss", 1, ".6f"), ("trainable", "trainable", 1, ",d")),
        ("optimizer", "optimizer", 1, ""),
    ],
}


def _shown_value(value: Any, scale: float, fmt: str) -> str:
    """A stored value as the bench prints it; a dict of metrics as "name value / name value"."""
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return " / ".join(f"{k} {_shown_value(v, scale, fmt)}" for k, v in value.items())
    if isinstance(value, bool) or not isinstance(value, int | float) or not fmt:
        return str(value)
    return format(value * scale if scale != 1 else value, fmt)


def _dotted(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def _setting(bench: dict[str, Any]) -> str:
    setting = bench.get("setting") or bench.get("settings") or {}
    return " ".join(f"{k}={v}" for k, v in setting.items() if v not in (None, [], ""))


def bench_stamp(bench: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Where a measurement comes from: its commit, machine, threads, load, date and command."""
    p = bench["provenance"]
    commit = (p.get("git_commit") or "not recorded")[:10] + ("+dirty" * bool(p.get("git_dirty")))
    load = p.get("load_average")
    shown = ", ".join(f"{x:.1f}" for x in load) if load else "not recorded"
    lines = [
        f"Measured {_when(p.get('date') or '')} UTC; commit {commit}; machine {p.get('cpu_model')}, "
        f"{p.get('cpu_cores')} cores, {p.get('torch_threads')} torch threads; load average (1, 5, 15 min) "
        f"when it ended: {shown}.",
        "",
        f"- measured: `{p.get('command')}`",
    ]
    if spec.get("store"):
        lines.append(f"- stored: `{spec['store']}`")
    return [*lines, f"- page: `{COMMAND}`"]


def render_bench(
    spec_bench: dict[str, Any], benches: list[dict[str, Any]], spec: dict[str, Any]
) -> list[str]:
    """The newest stored measurement matching the table's ``filter``: its table, notes, ratios, stamp."""
    found = [
        b
        for b in benches
        if b["kind"] == spec_bench.get("kind", b["kind"])
        and all(_dotted(b, k) == v for k, v in spec_bench.get("filter", {}).items())
    ]
    head = [f"## {spec_bench['title']}", ""]
    if not found:
        run = f" Not yet measured — run: `{spec_bench['run']}`" if spec_bench.get("run") else ""
        return [*head, f"No stored measurement matches this table yet.{run}", ""]
    bench = found[-1]
    columns = BENCH_COLUMNS[bench["kind"]]
    ref = str(bench.get("ref", ""))
    headers = [c[1].replace("{ref}", ref) for c in columns]
    rows = [[_shown_value(row.get(c[0]), c[2], c[3]) for c in columns] for row in bench["rows"]]
    align = "".join("r" if c[3] and c[0] != "metrics" else "l" for c in columns)
    lines = [*head] if bench.get("notes") else [*head, f"Setting: {_setting(bench)}.", ""]
    lines += markdown_table(headers, rows, align)
    lines += ["", *(f"- {n}" for n in [*bench.get("warnings", []), *bench.get("notes", [])])]
    if bench.get("ceilings_gflops"):
        ceilings = ", ".join(f"{k} {v:.0f}" for k, v in bench["ceilings_gflops"].items())
        lines.append(
            f"- % of ceiling: over this machine's matmul ceiling measured in the run: {ceilings} GFLOP/s"
        )
    if spec_bench.get("ratios"):
        lines += ["", *render_ratios(spec_bench["ratios"], bench, columns[0][0])]
    return [*lines, "", *bench_stamp(bench, spec), ""]


def render_ratios(ratios: list[dict[str, Any]], bench: dict[str, Any], label: str) -> list[str]:
    """Each target "a's key / b's key <= at_most" computed from the stored rows, and whether it is met."""
    rows = {row[label]: row for row in bench["rows"]}
    out = []
    for ratio in ratios:
        key, a, b = ratio.get("key", "step_s"), rows.get(ratio["a"]), rows.get(ratio["b"])
        if a is None or b is None:
            raise ConfigError(
                f"ratio {ratio['claim']!r}: rows {ratio['a']!r}, {ratio['b']!r}; stored: {list(rows)}"
            )
        value = a[key] / b[key]
        verdict = "met" if value <= ratio["at_most"] else "not met"
        out.append(
            [
                ratio["claim"],
                f"{ratio['a']} / {ratio['b']}",
                key,
                f"{value:.2f}",
                f"<= {ratio['at_most']}",
                verdict,
            ]
        )
    headers = ["claim", "rows", "of", "measured ratio", "target", "verdict"]
    return markdown_table(headers, out, "llllrl")
