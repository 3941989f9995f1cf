"""The memory a run would need, from the estimate peftlab logs before building a model
(peftlab/models/footprint.py), without building it: the model is made on the meta device.

    python scripts/estimate_memory.py method=lora_llm model=llama2_7b task=gsm8k schedule=spsft_llm \
        task.max_prompt_tokens=1024 task.max_target_tokens=1024

Any run override is accepted (``schedule.micro_batch_size``, ``schedule.activation_checkpointing``, ...).
"""

from __future__ import annotations

import sys

from peftlab.config import compose_config
from peftlab.models import architecture, build
from peftlab.models.footprint import Workload, estimate
from peftlab.registry import TASKS


def main(overrides: list[str]) -> str:
    cfg = compose_config([*overrides, "model.pretrained=false"])
    task = TASKS.get(cfg.task.name)(cfg.task, cfg.data_root)
    workload = Workload.from_config(cfg)
    location, extra = build._location(cfg.model)
    tokenizer, borrowed = build._tokenizer(cfg.model, location, extra, False)
    config = build._model_config(cfg.model, location, extra, False, tokenizer)
    architecture.keep_layers(config, cfg.model.get("num_layers"), cfg.model.name)
    dtype = build.resolve_dtype(cfg.model.dtype)
    empty = architecture.build_empty(build._auto_class(task.model_head, config, cfg.model), config, dtype)
    found = estimate(empty, empty.config, workload, lm_head=task.model_head == "lm")
    return f"{cfg.model.name} {cfg.model.dtype}, {cfg.method.name}, {workload}: {found.describe()}"


if __name__ == "__main__":
    print(main(sys.argv[1:]))
