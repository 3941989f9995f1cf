"""LoRA variants: each module registers one ``LowRankVariant`` in ``peftlab.registry.LORA_VARIANTS``,
selected with ``method.variant=<name>`` (see ``peftlab/blocks/lowrank.py``)."""
