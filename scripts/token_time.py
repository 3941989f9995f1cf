"""Seconds to build a training loader: tokenizing (task.cache_tokens=false), first cached build (tokenize +
write), second cached build (read), on a fresh cache folder."""

import sys
import tempfile
import time

from peftlab.config import compose_config
from peftlab.models import build_model
from peftlab.registry import TASKS

model_name, task_name, *overrides = sys.argv[1:]
cfg = compose_config([f"model={model_name}", f"task={task_name}", *overrides])
task = TASKS.get(task_name)(cfg.task, None)
head = task.model_head
model, tokenizer = build_model(cfg.model, task.num_labels if head != "lm" else 0, head)
task.use_model(model)
examples = task.load_split("train")
with tempfile.TemporaryDirectory() as folder:
    times = {}
    for label, cached in (
        ("tokenize", False),
        ("first cached (tokenize + write)", True),
        ("second cached (read)", True),
    ):
        task.cfg = cfg.task
        task.config.cache_tokens, task.config.token_cache_dir = cached, folder
        start, cpu = time.perf_counter(), time.process_time()
        task.build_loader(examples, tokenizer, 32, cfg.schedule.max_seq_length, None)
        times[label] = (time.perf_counter() - start, time.process_time() - cpu)
print(
    f"{model_name}/{task_name} ({len(examples)} examples):",
    ", ".join(f"{k} {w:.2f} s wall, {c:.2f} s CPU" for k, (w, c) in times.items()),
)
