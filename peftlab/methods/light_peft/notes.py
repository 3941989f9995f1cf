"""One-line summaries of a Light-PEFT pruning record (benchmark rows)."""

from __future__ import annotations

import re
from typing import Any


def kept_modules_note(record: dict[str, Any]) -> str:
    """Which PEFT modules a pruning kept: the backward pass reaches down to the lowest of them, so where
    they are decides much of the training cost."""
    kept, total = record.get("ranks", {}), len(record.get("module_scores", {}))
    blocks = sorted({int(m.group(1)) for name in kept if (m := re.search(r"\.layers?\.(\d+)\.", name))})
    where = f", in blocks {blocks}" if blocks else ""
    return f"PEFT modules kept: {len(kept)} of {total}{where}"
