"""A page's claim "on average over tasks": per seed, the mean over the tasks, paired by seed; a seed that
lacks a task on either side is left out rather than averaged over fewer tasks."""

from pathlib import Path

from omegaconf import OmegaConf

from peftlab.reporting.pages import _per_seed, render_comparisons
from peftlab.reporting.results import Run

SCORES = {  # (method, task, seed) -> accuracy fraction
    ("aflora", "cola", 1): 0.60,
    ("aflora", "mrpc", 1): 0.80,
    ("aflora", "cola", 2): 0.50,
    ("aflora", "mrpc", 2): 0.90,
    ("lora", "cola", 1): 0.40,
    ("lora", "mrpc", 1): 0.70,
    ("lora", "cola", 2): 0.45,
    ("lora", "mrpc", 2): 0.75,
    ("aflora", "cola", 3): 0.99,  # seed 3 has no MRPC run: not an average over both tasks
    ("lora", "cola", 3): 0.10,
}
CLAIM = {
    "claim": "AFLoRA above LoRA",
    "a": {"method.name": "aflora"},
    "b": {"method.name": "lora"},
    "average_over": "task.name",
}


def run(method: str, task: str, seed: int, score: float) -> Run:
    config = OmegaConf.create({"method": {"name": method}, "task": {"name": task}, "seed": seed})
    results = {
        "status": "completed",
        "main_metric": "accuracy",
        "metric_units": {"accuracy": "fraction"},
        "final_eval": {"accuracy": score},
    }
    return Run(path=Path(f"/nonexistent/{method}_{task}_{seed}"), config=config, results=results)


RUNS = [run(*key, score) for key, score in SCORES.items()]


def test_the_average_over_tasks_is_per_seed_and_needs_every_task():
    a, b = _per_seed(RUNS, CLAIM, "a"), _per_seed(RUNS, CLAIM, "b")
    assert a.keys() == b.keys() == {1, 2}
    assert abs(a[1] - 70.0) < 1e-9 and abs(a[2] - 70.0) < 1e-9
    assert abs(b[1] - 55.0) < 1e-9 and abs(b[2] - 60.0) < 1e-9


def test_without_average_over_a_seed_keys_one_run():
    one_task = {
        **CLAIM,
        "a": {"method.name": "aflora", "task.name": "cola"},
        "b": {"method.name": "lora", "task.name": "cola"},
    }
    del one_task["average_over"]
    assert _per_seed(RUNS, one_task, "a") == {1: 60.0, 2: 50.0, 3: 99.0}


def test_the_claim_line_says_it_averages_and_pairs_two_seeds():
    (line,) = [x for x in render_comparisons([CLAIM], RUNS) if x.startswith("| AFLoRA")]
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert cells[1:3] == ["final, mean over task.name", "2"]
    assert cells[3].startswith("+12.50")  # mean of (70 - 55, 70 - 60)


def test_a_report_column_is_the_mean_of_the_method_reports_number():
    from peftlab.reporting.pages import column

    runs = [run("aflora", "cola", s, 0.5) for s in (1, 2)]
    for r, step in zip(runs, (16, 20), strict=True):
        r.results["method_report"] = {"all_frozen_step": step}
    header, cell = column("report.all_frozen_step")
    assert header == "all_frozen_step (mean)" and cell(runs) == "18.0"
    assert cell([run("lora", "cola", 1, 0.5)]) == ""  # a method without that report: blank, not 0
