"""What a run will take in memory, estimated before the model is built, and the refusal when it cannot fit.

The model is first built on the meta device (no memory), so the parameter count is exact; the rest is
an estimate: fp32 gradients and the two fp32 Adam moments of the trained parameters (all of them when
the method trains every base weight, with their fp32 copy on a 16-bit base; at most
``PEFT_TRAINABLE_SHARE`` of them otherwise: adapters are attached later, in fp32; none when only the head
trains), and, when the backward pass goes through the backbone, the activations it keeps for one
micro-batch (``schedule.micro_batch_size``; with activation checkpointing only each block's input plus one
block's activations during its recomputation), after Korthikanti et al. 2022 (per token and block at 16 bits:
17 x hidden + 4 x FFN width bytes, their 34 x hidden for a 4 x hidden FFN, plus 5 x heads x sequence when
attention scores are stored, i.e. not with SDPA/flash), times ``ACTIVATION_MARGIN``, plus the logits of a
language-model head. Under FSDP (``distributed.strategy=fsdp``) each rank holds 1/world of the weights,
gradients and Adam moments (activations are per rank); the block gathered whole for its forward is not
counted. It is meant to catch a 7B model on a 24 GiB machine, not to predict a peak to the
megabyte.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from peftlab import distributed
from peftlab.errors import ConfigError
from peftlab.models.architecture import num_layers
from peftlab.registry import METHODS

log = logging.getLogger(__name__)

GIB = 2**30
FP32 = 4
ADAM_BYTES = 2 * FP32  # two fp32 moments per trained parameter
PEFT_TRAINABLE_SHARE = 0.03  # LoRA r=64 on every linear layer of Llama-2-7B trains 2.4%
# The tensors autograd saved in our CPU measurements (scripts/efficiency_tables.py) were 1.4-2.4x that
# count: LoRA's dropout copies, SwiGLU's extra FFN tensors, DeBERTa's three attention score maps.
ACTIVATION_MARGIN = 1.5
FFN_WIDTH_KEYS = ("intermediate_size", "ffn_dim", "encoder_ffn_dim")
FUSED_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class Workload:
    """What one training step processes, and how much of the model it trains."""

    batch_size: int  # examples per forward: the micro-batch when gradients are accumulated
    seq_len: int
    trains_backbone_weights: bool = False  # the method's (``Method.trains_backbone_weights``)
    backward_through_backbone: bool = True  # the method's; False: no activations kept
    checkpointing: bool = False  # schedule.activation_checkpointing
    shards: int = 1  # ranks the weights, gradients and Adam moments are split between (FSDP)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Workload:
        """Generation tasks budget prompt and target apart (``task.max_*_tokens``); others use
        ``schedule.max_seq_length``. What the method trains comes from its class (``cfg.method.name``).
        Under FSDP the model's state is split between the ranks of the process group."""
        task = cfg.task
        if task.get("max_prompt_tokens") is not None:
            seq_len = int(task.max_prompt_tokens) + int(task.get("max_target_tokens") or 0)
        else:
            seq_len = int(cfg.schedule.max_seq_length)
        sched = cfg.schedule
        batch = int(sched.get("micro_batch_size") or sched.batch_size)
        checkpointing = bool(sched.get("activation_checkpointing", False))
        method = METHODS.get(str(cfg.method.name))
        fsdp = cfg.get("distributed", {}).get("strategy") == "fsdp"
        return cls(
            min(batch, int(sched.batch_size)),
            seq_len,
            method.trains_backbone_weights,
            method.backward_through_backbone,
            checkpointing,
            distributed.world_size() if fsdp else 1,
        )


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = (
            f"weights {self.weights / GIB:.2f}",
            f"gradients {self.gradients / GIB:.2f}",
            f"Adam {self.optimizer / GIB:.2f}",
            f"activations ~{self.activations / GIB:.2f}",
        )
        return f"~{self.total / GIB:.2f} GiB ({self.params / 1e6:,.1f}M params: {' + '.join(parts)} GiB)"


def estimate(model: nn.Module, config: Any, workload: Workload | None, lm_head: bool) -> MemoryEstimate:
    """Memory of training ``model`` (meta or real) on ``workload``; weights only without one.
    ``lm_head``: the model ends in a vocabulary projection (generation tasks)."""
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if workload is None:
        return MemoryEstimate(params, weights, 0, 0, 0)
    element = next(model.parameters()).element_size()
    if workload.trains_backbone_weights:
        trained = params
        weights = params * FP32  # trained tensors are kept in fp32 (peftlab/train/precision.py)
    elif not workload.backward_through_backbone:  # only the head trains
        trained = 0
    else:
        trained = int(PEFT_TRAINABLE_SHARE * params)
        weights += trained * FP32  # the adapters, fp32
    backward = workload.backward_through_backbone
    activations = activation_bytes(config, workload, element, lm_head) if backward else 0
    n = workload.shards
    state = (-(-weights // n), -(-trained * FP32 // n), -(-trained * ADAM_BYTES // n))  # ceil: padded shards
    return MemoryEstimate(params, *state, activations)


def activation_bytes(config: Any, workload: Workload, element: int, lm_head: bool) -> int:
    """Rough bytes a backward pass keeps (Korthikanti et al. 2022, Table 2, no recomputation, with the
    FFN width apart), scaled from their 16-bit count to ``element`` bytes and by ``ACTIVATION_MARGIN``;
    0 for a model without a transformers config."""
    hidden = getattr(config, "hidden_size", None)
    if config is None or hidden is None:
        return 0
    try:
        layers = num_layers(config)
    except ConfigError:  # a family whose block count we do not know: activations not estimated
        return 0
    tokens_per_row = _tokens_per_row(config, workload)
    tokens = workload.batch_size * tokens_per_row
    ffn = next((int(getattr(config, k)) for k in FFN_WIDTH_KEYS if getattr(config, k, None)), 4 * hidden)
    per_token_layer = 17 * hidden + 4 * ffn
    if getattr(config, "_attn_implementation", None) not in FUSED_ATTENTION:
        per_token_layer += 5 * int(getattr(config, "num_attention_heads", 1)) * tokens_per_row
    if workload.checkpointing:  # every block keeps its input (2 bytes per value at 16 bits); one recomputes
        kept = layers * tokens * 2 * hidden + ACTIVATION_MARGIN * tokens * per_token_layer
        total = int(kept * element / 2)
    else:
        total = int(ACTIVATION_MARGIN * layers * tokens * per_token_layer * element / 2)
    vocab = getattr(config, "vocab_size", None)
    if lm_head and vocab:
        total += 2 * tokens * int(vocab) * 4  # fp32 logits and their gradient
    return total


def _tokens_per_row(config: Any, workload: Workload) -> int:
    """Sequence length of one example: the patches (+ [CLS]) of an image model, else the text budget."""
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if isinstance(image, int) and isinstance(patch, int):
        return (image // patch) ** 2 + 1
    return workload.seq_len


def available_memory(device: torch.device) -> int:
    """Bytes free for the run: free CUDA memory on a GPU, with the blocks PyTorch's allocator has cached
    but not handed out (an earlier run's, in a sequential sweep); MemAvailable (/proc/meminfo) on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(found: MemoryEstimate, device: torch.device, model_name: str, dtype: torch.dtype) -> None:
    """Log the estimate; refuse (ConfigError) when it exceeds the memory available on ``device``."""
    log.info("memory estimate for model %s (%s) on %s: %s", model_name, dtype, device, found.describe())
    if device.type == "meta":  # nothing is allocated there (parameter counting)
        return
    available = available_memory(device)
    if found.total <= available:
        return
    raise ConfigError(
        f"model {model_name!r} ({dtype}) needs {found.describe()} but {device} has "
        f"{available / GIB:.2f} GiB available. Keep fewer blocks (model.num_layers=N), use a smaller "
        "schedule.batch_size or schedule.max_seq_length, a 16-bit model.dtype, distributed.strategy=fsdp "
        "over more processes, or a device with more memory."
    )
