"""Models: where weights come from (package, hub, random config) and the task heads on top."""

from peftlab.models.build import build_model, resolve_device
from peftlab.models.heads import SequenceClassifier

__all__ = ["SequenceClassifier", "build_model", "resolve_device"]
