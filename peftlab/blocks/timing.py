"""Step times around an event of a run (AFLoRA's freezing, Light-PEFT's pruning), one convention for all."""

from __future__ import annotations

import statistics


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def median_step_times_around(
    step_times: list[float], first_event_step: int, last_event_step: int | None = None
) -> tuple[float | None, float | None]:
    """Median seconds of a step before the event and after it (``step_times[k - 1]``: step k).

    The event happens after optimizer step ``first_event_step`` (and, when it spans steps, ends after
    ``last_event_step``). Left out: step 1 (warm-up, the FLOP counter) and the first step after the
    event (the rebuilt optimizer's and the changed model's warm-up), so both medians are of steady steps.
    """
    last = first_event_step if last_event_step is None else last_event_step
    return median(step_times[1:first_event_step]), median(step_times[last + 1 :])
