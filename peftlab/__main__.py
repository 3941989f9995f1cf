"""CLI: ``python -m peftlab method=lora task=rte`` (Hydra; ``--help`` lists the config groups)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from peftlab import distributed
from peftlab.config import conf_dir, register_schemas
from peftlab.errors import ConfigError, TrainingDiverged
from peftlab.sweep import record_failure

log = logging.getLogger("peftlab")
register_schemas()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from peftlab.experiment import run_experiment

    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 logs progress
        logging.getLogger("peftlab").setLevel(logging.WARNING)
    try:
        results = run_experiment(cfg)
        distributed.shutdown()
    except Exception as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # record it and let the other jobs run
            if isinstance(err, ConfigError | TrainingDiverged):
                log.error("job failed: %s", err)
            else:
                log.exception("job failed: %s", err)
            record_failure(Path(cfg.output_dir), cfg, err)
            return None
        if isinstance(err, ConfigError):
            log.error("error: %s", err)
            sys.exit(2)
        if isinstance(err, TrainingDiverged):
            log.error("training diverged: %s", err)
            sys.exit(3)
        raise
    if results.get("eval_only"):
        return results["eval"][results["main_metric"]]
    return results["final_eval"][results["main_metric"]]


if __name__ == "__main__":
    main()
