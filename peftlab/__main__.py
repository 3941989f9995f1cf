"""CLI: ``python -m peftlab method=lora task=rte`` (Hydra; ``--help`` lists the config groups)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from peftlab.config import conf_dir, register_schemas
from peftlab.errors import ConfigError, TrainingDiverged

log = logging.getLogger("peftlab")
register_schemas()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from peftlab.experiment import run_experiment

    try:
        results = run_experiment(cfg)
    except ConfigError as err:
        log.error("error: %s", err)
        sys.exit(2)
    except TrainingDiverged as err:
        log.error("training diverged: %s", err)
        sys.exit(3)
    if results.get("eval_only"):
        return results["eval"][results["main_metric"]]
    return results["final_eval"][results["main_metric"]]


if __name__ == "__main__":
    main()
