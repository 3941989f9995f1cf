"""``method.peft_type`` and ``method.config`` checked against huggingface peft's own config classes, so a
bad value fails in one line, naming it and what is allowed, when the run's config is checked (before its
run folder exists)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peftlab import checks
from peftlab.errors import ConfigError
from peftlab.methods.base import MethodConfig

# set by peftlab, not by method.config: the type picks the class; peft wraps the bare backbone, whose
# features (not a peft task model's outputs) the task head reads
MANAGED = ("peft_type", "task_type")
FEATURES = "FEATURE_EXTRACTION"
PREFIX = "PREFIX_TUNING"
# a placeholder that passes AdaLoRA's own check; the run fills the real count before its first step
UNSET_TOTAL_STEP = 10**9


def peft_config_classes() -> dict[str, type]:
    """peft's config class of every tuner type, by its name (``LORA``, ``IA3``, ``PROMPT_TUNING``, ...)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(getattr(key, "value", key)): cls for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def peft_config_class(peft_type: str) -> type:
    """peft's config class of ``peft_type``; an unknown type is refused with the allowed ones."""
    classes = peft_config_classes()
    if peft_type not in classes:
        raise ConfigError(
            f"peft peft_type={peft_type!r} is not allowed; allowed: {', '.join(sorted(classes))}"
        )
    return classes[peft_type]


def accepted_fields(cls: type) -> list[str]:
    """The keyword arguments of a peft config class that ``method.config`` may set."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in MANAGED)


# what peft raises when a config does not fit a model
WRAP_ERRORS = (ValueError, TypeError, KeyError, NotImplementedError, AttributeError)


def wrap_error(peft_type: str, model: Any, err: Exception) -> ConfigError:
    """peft's refusal of a config on this backbone, in one line, with the keys the config class takes."""
    cls = peft_config_class(peft_type)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ConfigError(
        f"peft peft_type={peft_type} cannot wrap {type(model).__name__}: {first}; "
        f"allowed keys of {cls.__name__}: {', '.join(accepted_fields(cls))}"
    )


def is_prompt_learning(cls: type) -> bool:
    """Prompt, prefix and P-tuning: virtual tokens instead of layers."""
    from peft.config import PromptLearningConfig

    return issubclass(cls, PromptLearningConfig)


@dataclass
class PeftConfig(MethodConfig):
    peft_type: str = "LORA"
    config: dict[str, Any] = field(default_factory=dict)  # keyword arguments of peft's <peft_type>Config

    def __post_init__(self) -> None:
        cls = peft_config_class(self.peft_type)
        allowed = accepted_fields(cls)
        unknown = sorted(set(self.config) - set(allowed))
        if unknown:
            raise ConfigError(
                f"peft config key(s) {unknown} are not options of peft's {cls.__name__}; "
                f"allowed: {', '.join(allowed)}"
            )
        if "lora_alpha" in self.config:  # 0 leaves the adapter out, a negative one subtracts its update
            checks.number("method.config.lora_alpha", self.config["lora_alpha"], above=0)
        self.build()  # peft's own checks of the values

    @property
    def prompt_learning(self) -> bool:
        return is_prompt_learning(peft_config_class(self.peft_type))

    def check_supports(self, backbone: Any) -> None:
        """Prefix tuning hands its keys and values to the attention layers as ``past_key_values``; a
        backbone whose forward takes none (DeBERTa) would fail in its first step, so it is refused."""
        import inspect

        takes = inspect.signature(type(backbone).forward).parameters
        if self.peft_type == PREFIX and not {"past_key_values", "cache"} & set(takes):
            raise ConfigError(
                f"peft peft_type={PREFIX} cannot wrap {type(backbone).__name__}: its forward takes no "
                "past_key_values (cache), through which prefix tuning adds its keys and values to every "
                "attention layer; allowed on it: PROMPT_TUNING, P_TUNING or a tuner of layers"
            )

    def check_backbone(self, backbone: Any) -> None:
        """peft's own injection on ``backbone`` (built on the meta device): a target that matches no
        module, or a type that does not support the model, is refused now, before any run folder."""
        from peft import get_peft_model

        self.check_supports(backbone)
        try:
            get_peft_model(backbone, self.build())
        except WRAP_ERRORS as err:
            raise wrap_error(self.peft_type, backbone, err) from err

    def build(self, total_steps: int | None = None) -> Any:
        """peft's config object; AdaLoRA's ``total_step``, when not set, is the run's schedule
        (``total_steps``) or a placeholder until the schedule is known."""
        cls = peft_config_class(self.peft_type)
        values = dict(self.config)
        if "total_step" in accepted_fields(cls) and values.get("total_step") is None:
            values["total_step"] = total_steps or UNSET_TOTAL_STEP
        try:
            return cls(task_type=FEATURES, **values)
        except (ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"peft {cls.__name__}({values}) refused by peft: {first}; "
                f"allowed keys: {', '.join(accepted_fields(cls))}"
            ) from err
