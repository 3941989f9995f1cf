"""GSM8k: grade-school maths word problems, scored by exact match of the final number.

Train on ``gsm8k/train.jsonl`` (prompt = question, target = the reference solution with its reasoning,
calculator annotations ``<<a*b=c>>`` and ``#### N``); evaluate on ``gsm8k/test.jsonl`` (the first
``max_eval_samples``) with greedy decoding. The prediction's answer is the number after ``####``, else the
last number it wrote; commas and ``$`` are dropped on both sides (``peftlab.tasks.metrics.gsm8k_answer``).
"""

from __future__ import annotations

import logging

from peftlab.errors import ConfigError
from peftlab.registry import TASKS
from peftlab.tasks.data_root import find_data_file
from peftlab.tasks.generation import GenerationTask, TextPair, read_jsonl
from peftlab.tasks.metrics import exact_match, gsm8k_answer

log = logging.getLogger(__name__)
FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}


@TASKS.register("gsm8k")
class Gsm8k(GenerationTask):
    main_metric = "exact_match"
    eval_splits = ("test",)

    def read_split(self, split: str) -> list[TextPair]:
        if split not in FILES:
            raise ConfigError(f"task gsm8k has no split {split!r}; allowed: {', '.join(FILES)}")
        path, tried = find_data_file(self.data_root, FILES[split])
        if path is None:
            raise ConfigError(
                f"GSM8k {split}: no file at {', '.join(map(str, tried))}; set data_root=DIR (a folder "
                f"holding {FILES[split]}) or PEFTLAB_DATA_ROOT"
            )
        rows = read_jsonl(path, ("question", "answer"))
        log.info("gsm8k %s: %d problems from %s", split, len(rows), path)
        return [TextPair(r["question"], r["answer"], gsm8k_answer(r["answer"])) for r in rows]

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {"exact_match": exact_match([gsm8k_answer(p) for p in predictions], references)}
