"""CNN/DailyMail summarisation, scored by ROUGE-1/2/L/Lsum (F1 x 100, stemming on).

Local data: the 250 CNN/DM test articles of ``cnn_dailymail/frank_cnndm_test_250.jsonl`` (FRANK's copy,
sorted by hash; references are PTB-tokenised highlights). They are split deterministically: the rows
whose position in the file is a multiple of ``eval_every_nth`` (default 5: rows 0, 5, 10, ... = 50
articles) are evaluated on, the other 200 trained on. This is a check of the pipeline, not the papers'
setting (287k training articles). When the file is missing, the hub dataset ``cnn_dailymail`` 3.0.0
(train / validation) is used, for users with a network.
"""

from __future__ import annotations

import logging

from peftlab.errors import ConfigError
from peftlab.registry import TASKS
from peftlab.tasks.data_root import find_data_file, load_hub_dataset
from peftlab.tasks.generation import GenerationTask, HeldOutGenerationConfig, TextPair, read_jsonl
from peftlab.tasks.metrics import ROUGE_TYPES, rouge

log = logging.getLogger(__name__)
LOCAL_FILE = "cnn_dailymail/frank_cnndm_test_250.jsonl"
HUB = ("abisee/cnn_dailymail", "3.0.0")


@TASKS.register("cnn_dm")
class CnnDailyMail(GenerationTask):
    main_metric = "rougeL"
    percent_metrics = ROUGE_TYPES  # metrics.rouge reports x100, as the papers print it
    eval_splits = ("validation",)
    config_class = HeldOutGenerationConfig

    def read_split(self, split: str) -> list[TextPair]:
        if split not in ("train", "validation"):
            raise ConfigError(f"task cnn_dm has no split {split!r}; allowed: train, validation")
        path, tried = find_data_file(self.data_root, LOCAL_FILE)
        if path is None:
            return self._from_hub(split, tried)
        rows = read_jsonl(path, ("article", "highlights"))
        chosen = self.held_out(rows, split)
        log.info("cnn_dm %s: %d of the %d local articles (%s)", split, len(chosen), len(rows), path)
        return [TextPair(r["article"], r["highlights"], r["highlights"]) for r in chosen]

    def _from_hub(self, split: str, tried) -> list[TextPair]:
        rows = load_hub_dataset(
            *HUB,
            split,
            f"CNN/DM {split}: no file at {', '.join(map(str, tried))}",
            f"set data_root=DIR (a folder holding {LOCAL_FILE}) or PEFTLAB_DATA_ROOT",
        )
        return [TextPair(r["article"], r["highlights"], r["highlights"]) for r in rows]

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return rouge(predictions, references)
