"""First (compiling) and later training-step times of eager vs compiled LoRA on minilm, batch 16 of RTE."""

import tempfile
import time
from pathlib import Path

from peftlab.reporting.benchmark import BenchSettings, make_row
from peftlab.run.folder import RunDir

settings = BenchSettings(model="minilm", task="rte", batch_size=16, steps=8, warmup=0)
with tempfile.TemporaryDirectory() as tmp:
    for i, spec in enumerate(["eager method=lora", "compiled method=lora schedule.compile=true"]):
        row = make_row(spec, settings, 16, RunDir(Path(tmp) / str(i)))
        times = []
        for _ in range(4):
            start = time.perf_counter()
            row.trainer.train_step(row.batch)
            times.append(time.perf_counter() - start)
        later = ", ".join(f"{t:.2f}" for t in times[1:])
        print(f"{row.label}: first step {times[0]:.1f} s, next steps {later} s")
