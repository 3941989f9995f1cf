"""Step timing on CUDA waits for the device only at logging points (events per step, read then), and the
throughput in results.json leaves out each process's first step (CUDA init, the FLOP count,
compilation). CUDA's event API is replaced by a fake that counts the host waits."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.train import efficiency

STEP_MS = 5.0  # what every fake event pair says a step took


class FakeEvent:
    waits = 0  # host syncs on events

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.recorded = False

    def record(self, stream=None) -> None:
        self.recorded = True

    def synchronize(self) -> None:
        FakeEvent.waits += 1

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.recorded and end.recorded
        return STEP_MS


@pytest.fixture
def fake_cuda(monkeypatch):
    syncs = []
    FakeEvent.waits = 0
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: syncs.append(a))
    monkeypatch.setattr(efficiency, "synchronize", lambda device: syncs.append(device))
    return syncs


def test_cuda_steps_are_timed_by_events_read_once_per_log_line(tmp_path, fake_cuda):
    cfg = tiny_config(tmp_path, "method=lora", "schedule.max_steps=6", "schedule.log_every_steps=3")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    trainer.timer = efficiency.StepTimer(torch.device("cuda", 0))  # the model itself stays on the CPU
    history = trainer.fit()
    assert fake_cuda == []  # no device-wide synchronize, per step or otherwise
    assert FakeEvent.waits <= 3  # the two log lines (steps 3 and 6) and the end of training, not 6
    assert history.step_times == [STEP_MS / 1000] * 6
    assert history.train_time_s == pytest.approx(6 * STEP_MS / 1000)


def test_throughput_leaves_out_the_first_step(tmp_path):
    cfg = tiny_config(tmp_path, "method=lora", "schedule.max_steps=4", "schedule.batch_size=8")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    history = trainer.fit()
    results = json.loads(json.dumps(trainer.summary(wall_time_s=1.0)))
    assert results["throughput_excludes_steps"] == [1]
    steady = sum(history.step_times[1:])
    assert results["samples_per_s"] == pytest.approx((history.samples - 8) / steady)
    assert results["tokens_per_s"] == pytest.approx((history.tokens - history.warmup_tokens) / steady)
    assert 0 < history.warmup_tokens < history.tokens
    assert "data_wait_s" in results and "collating" in results["step_time_covers"]


# -- generation's clock and the evaluation's memory -------------------------------------------------------
class LoggedTensor(torch.Tensor):
    """Generated ids whose reading to the host (the wait for the device) is logged."""

    log: list[str] = []

    def tolist(self):
        LoggedTensor.log.append("read")
        return super().tolist()


def test_the_generation_clock_stops_after_the_tokens_are_on_the_host(monkeypatch):
    import types

    from test_generation import gsm8k_task, lm_and_tokenizer

    from peftlab.tasks import generation

    model, tokenizer = lm_and_tokenizer("tiny_llama")
    task = gsm8k_task("task.max_new_tokens=3")
    task.use_model(model)
    examples = [generation.TextPair("what is two plus two", "four #### 4", "4")]
    loader = task.build_loader(examples, tokenizer, 1, 0)
    log = LoggedTensor.log = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a: generate(*a).as_subclass(LoggedTensor))
    clock = types.SimpleNamespace(perf_counter=lambda: log.append("clock") or 0.0)
    monkeypatch.setattr(generation, "time", clock)
    task.evaluate(model, loader, torch.device("cpu"))
    assert log[:3] == ["clock", "read", "clock"]


def test_the_training_peak_leaves_out_the_evaluations(tmp_path, monkeypatch):
    from test_gpu_readiness_bench_memory import LiveBytes

    counter = LiveBytes()
    monkeypatch.setattr(efficiency, "tracks_device_memory", lambda device: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: counter.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", counter.reset_peak)
    cfg = tiny_config(tmp_path, "method=lora", "schedule.max_steps=2", "schedule.eval_every_steps=1")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    evaluate, big = trainer.task.evaluate, 64 * 2**20

    def evaluate_with_a_big_cache(*args):
        cache = torch.empty(big, dtype=torch.uint8)  # what generation's KV cache would hold  # noqa: F841
        return evaluate(*args)

    monkeypatch.setattr(trainer.task, "evaluate", evaluate_with_a_big_cache)
    with counter:
        trainer.fit()
        results = trainer.summary(wall_time_s=1.0)
    assert 0 < results["peak_memory_bytes"] < big <= results["eval_peak_memory_bytes"]


# -- speed defaults: TF32, loader workers and pinned memory on CUDA, the attention kernel recorded -------
def test_matmul_precision_is_set_on_cuda_only_and_recorded(tmp_path, monkeypatch):
    from peftlab.train import precision

    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    assert precision.set_matmul_precision("high", torch.device("cuda", 0)) == "highest"  # (mocked)
    assert precision.set_matmul_precision("high", torch.device("cpu")) == "highest"
    assert calls == ["high"]
    trainer = build_trainer(tiny_config(tmp_path, "method=lora", "schedule.max_steps=1"), RunDir(tmp_path))
    assert trainer.summary(wall_time_s=1.0)["matmul_precision"] == torch.get_float32_matmul_precision()


def test_loaders_pin_memory_and_use_workers_on_cuda_only(tmp_path):
    from peftlab.tasks.batching import device_loading

    trainer = build_trainer(
        tiny_config(tmp_path, "method=lora", "schedule.loader_workers=3"), RunDir(tmp_path)
    )
    loader = trainer.train_loader
    assert (loader.num_workers, loader.pin_memory) == (0, False)  # CPU: in the main process
    device_loading(loader, torch.device("cuda", 0), 3)
    assert (loader.num_workers, loader.pin_memory) == (3, True)


@pytest.mark.parametrize(("model", "kernel"), [("tiny_bert", "sdpa"), ("tiny_deberta", "eager")])
def test_results_record_the_attention_kernel(tmp_path, model, kernel):
    cfg = tiny_config(tmp_path, "method=lora", f"model={model}", "schedule.max_steps=1")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    assert trainer.summary(wall_time_s=1.0)["attn_implementation"] == kernel


def test_a_step_that_never_ended_is_not_counted():
    """Ctrl-C inside a step leaves it started but not stopped: the summary of the interrupted run still
    reads the steps that ended (results.json keeps its step times)."""
    timer = efficiency.StepTimer(torch.device("cpu"))
    timer.start()
    timer.stop()
    timer.start()  # interrupted here
    assert len(timer.flush()) == 1 and timer.flush() == []
