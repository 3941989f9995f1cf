"""peftlab's sweep launchers (a Hydra plugin, so in ``hydra_plugins``): submitit's, whose preempted
jobs come back where they stopped (submitit's checkpoint hook).

submitit calls the submitted callable's ``checkpoint`` when its job gets the preemption / timeout
signal (SIGUSR2 by default, ``SUBMITIT_PREEMPT_SIGNAL``) and requeues what it returns. peftlab's
training loop stops after the current step with a checkpoint first (``train.stop``), then hands the
signal on; the resubmission continues the job's own folder with ``resume=true`` when that folder holds
a checkpoint, and starts the job again otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra_plugins.hydra_submitit_launcher import submitit_launcher


def resumed_overrides(overrides: list[str], folder: str | None) -> list[str]:
    """The job's overrides with ``resume=true`` when ``folder`` holds a checkpoint to continue."""
    from peftlab.run.folder import checkpoint_paths  # here: plugin discovery imports this module

    kept = [o for o in overrides if not o.startswith("resume=")]
    if folder is None or not checkpoint_paths(Path(folder)):
        return kept
    return [*kept, "resume=true"]


def _job_folder() -> str | None:
    return str(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


class _Resuming:
    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        """The resubmission of this job: its own folder, resumed from its newest checkpoint."""
        import submitit

        overrides = resumed_overrides(list(sweep_overrides), _job_folder())
        return submitit.helpers.DelayedSubmission(self, overrides, *args, **kwargs)


class LocalLauncher(_Resuming, submitit_launcher.LocalLauncher):
    """submitit's local processes (``hydra/launcher=local_processes``)."""


class SlurmLauncher(_Resuming, submitit_launcher.SlurmLauncher):
    """Slurm through submitit (``hydra/launcher=slurm_gpu``)."""
