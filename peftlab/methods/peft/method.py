"""huggingface peft's own tuners on the backbone: ``get_peft_model(model.backbone, <type>Config(**config))``,
any tuner type peft ships (``conf/method/peft_<name>.yaml`` are presets). The head stays peftlab's and is
trained; peft freezes the backbone's base weights and trains what its tuner adds. Prompt-style tuners add
virtual tokens (``prompt.py``: what the head pools); AdaLoRA's rank allocation runs after every optimizer
step (``adalora.py``). Exports: peft's own adapter folder (``--to peft``), or peft's ``merge_and_unload``
(``--to merged``) where the tuner can merge."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from peftlab.blocks.params import freeze, train_head
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodReport, TrainState, register_method
from peftlab.methods.peft import prompt
from peftlab.methods.peft.adalora import Allocation, orthogonal_penalty
from peftlab.methods.peft.config import UNSET_TOTAL_STEP, WRAP_ERRORS, PeftConfig, wrap_error

ADAPTER_DIR = "peft_adapter"  # peft's save_pretrained files, inside the run folder
PROMPT = "peft_prompt"  # the model's submodule holding peft's prompt encoder (prompt-style tuners)
MERGE_REFUSED = "its virtual tokens are inputs, not weights: there is nothing to fold into a layer"


@register_method("peft")
class Peft(Method):
    """huggingface peft's tuner on ``model.backbone``; the head trains. peft injects its layers into the
    backbone in place, so the model runs the backbone itself; the PeftModel is kept for its prompt,
    saving and merging."""

    config_class = PeftConfig
    config: PeftConfig
    output_files = (ADAPTER_DIR,)  # save_pretrained's folder

    def attach(self, model: nn.Module) -> None:
        from peft import get_peft_model

        freeze(model)
        self.config.check_supports(model.backbone)
        try:
            self.wrapped = get_peft_model(model.backbone, self.config.build())
        except WRAP_ERRORS as err:
            raise wrap_error(self.config.peft_type, model.backbone, err) from err
        self.allocation = Allocation(self.wrapped) if self.config.peft_type == "ADALORA" else None
        if self.config.prompt_learning:
            setattr(model, PROMPT, self.wrapped.prompt_encoder)  # trained and saved with the model
            prompt.install(model.backbone, self.wrapped)
        train_head(model)

    # -- AdaLoRA's budget -------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return orthogonal_penalty(self.wrapped) if self.allocation else None

    def after_backward(self, state: TrainState) -> None:
        if self.allocation:
            allocator = self.wrapped.base_model.rankallocator
            if allocator.peft_config.total_step == UNSET_TOTAL_STEP:  # first step, and after a resume
                allocator.set_total_step(state.total_steps)
            self.allocation.keep_gradients()

    def after_step(self, state: TrainState) -> None:
        if self.allocation:
            self.allocation.allocate(state.step)

    def state_dict(self) -> dict[str, Any]:
        return {"adalora": self.allocation.state_dict()} if self.allocation else {}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        if self.allocation and "adalora" in state:
            self.allocation.load_state_dict(state["adalora"])

    def report(self, state: TrainState, step_times: list[float]) -> MethodReport:
        """peft's own adapter folder (``save_pretrained``), and AdaLoRA's final ranks."""
        results = {"ranks": self.allocation.ranks()} if self.allocation else {}
        return MethodReport(results=results, files=self.saved_files())

    def saved_files(self) -> dict[str, bytes]:
        """``save_pretrained``'s two files, as bytes the run folder writes atomically."""
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            self.wrapped.save_pretrained(tmp)
            return {f"{ADAPTER_DIR}/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}

    # -- export -----------------------------------------------------------------------------------
    def peft_export(self, root: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
        """peft's own config and tensors, when the model others load is the backbone peft wrapped."""
        from peft import get_peft_model_state_dict

        if self.wrapped.get_base_model() is not root:
            raise ConfigError(
                f"method peft wrapped the backbone, not the {type(root).__name__} others load (a causal "
                "LM's decoder): peft's names would not match it; use --to merged"
            )
        return copy.deepcopy(self.wrapped.peft_config["default"]), get_peft_model_state_dict(self.wrapped)

    def merge_into_base(self, model: nn.Module) -> None:
        """peft's own merge, in place: the backbone holds plain layers again."""
        if self.config.prompt_learning:
            raise ConfigError(f"peft_type={self.config.peft_type}: {MERGE_REFUSED}")
        try:
            self.wrapped.merge_and_unload()
        except (ValueError, NotImplementedError, AttributeError) as err:
            raise ConfigError(f"peft cannot merge peft_type={self.config.peft_type}: {err}") from err
