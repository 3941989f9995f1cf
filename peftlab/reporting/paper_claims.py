"""The papers' efficiency figures, kept once, as data: ``scripts/efficiency_tables.py`` prints ours beside
them. Each claim compares two measured rows (a ratio) or states one row's value in the paper's unit.

Kinds: ``speedup`` = ref / row (how many times faster or fewer, e.g. AFLoRA 1.86x faster than ELoRA);
``fraction`` = row / ref (e.g. Light-PEFT's training memory, 0.61 of its PEFT's = -39%); ``absolute`` =
the row's own value (SPSFT's "mem" in GB, trainable parameters in millions). A paper range is compared
against its midpoint; a lower bound ("> 46.14 GB": the run did not fit in 80 GB) against the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("speedup", "fraction", "absolute")
# what a row measures: median step time, FLOPs per step, training memory minus inference memory ("mem"),
# training memory in all, median no-grad forward time, inference memory, trainable parameters
QUANTITIES = ("time", "flops", "mem", "train_mem", "infer_time", "infer_mem", "params")


@dataclass(frozen=True)
class Claim:
    table: str
    row: str  # row label
    quantity: str
    kind: str
    paper: float  # the figure ours is divided by
    paper_text: str  # as the paper prints it
    source: str
    ref: str | None = None  # the row compared against (speedup, fraction)
    model: str | None = None  # model config the figure is for (None: the table's every model)


AFLORA_SOURCE = "AFLoRA (Liu et al. 2024) Sec. 4 / Fig. 3: runtime and FLOPs averaged over the run"
# "comparable with LoRA in these two metrics": no figure is printed, so about 1.0
AFLORA_CLAIMS = tuple(
    Claim("aflora", row, quantity, kind, value, text, AFLORA_SOURCE, ref=ref)
    for row in ("aflora-trainable", "aflora-frozen", "aflora-run")
    for ref, quantity, kind, value, text in (
        ("elora1024", "time", "speedup", 1.86, "1.86x faster than ELoRA"),
        ("elora1024", "flops", "speedup", 2.96, "2.96x fewer FLOPs than ELoRA"),
        ("lora8", "time", "fraction", 1.0, "comparable with LoRA (~1x)"),
        ("lora8", "flops", "fraction", 1.0, "comparable with LoRA (~1x)"),
    )
)

LIGHT_PEFT_SOURCE = "Light-PEFT (Gu et al. 2024) abstract: RoBERTa-large / OPT, against the PEFT it wraps"
LIGHT_PEFT_CLAIMS = tuple(
    Claim("light-peft", row, quantity, kind, value, text, LIGHT_PEFT_SOURCE, ref=ref)
    for row, ref in (("light-peft-lora", "lora"), ("light-peft-adapter", "adapter"))
    for quantity, kind, value, text in (
        ("time", "speedup", 1.5, "1.4-1.6x training speed-up"),
        ("train_mem", "fraction", 0.61, "-39% training memory"),
        ("infer_time", "speedup", 1.6, "1.6x inference speed"),
        ("infer_mem", "fraction", 0.52, "-48% inference memory"),
    )
)

SPSFT_SOURCE = "SPSFT Appendix D.2, Table 7 (Tables 6/8 for FA-LoRA on Llama-3): fp32, A100-80GB"
# row -> (Llama-2-7B mem GB, #param M, Llama-3-8B mem GB, #param M); a "> x" mem did not fit in 80 GB
SPSFT_FIGURES = {
    "lora64": ("23.46", 159.9, "30.37", 167.8),
    "dora64": ("44.80", 161.3, ">46.14", 169.1),
    "spsft128": ("17.62", 145.8, "24.49", 159.4),
    "fa-lora64": ("17.25", 92.8, "24.55", 113.2),  # Table 7 prints 30.37 for Llama-3; its TTL - M is 24.55
    "fa-dora64": ("30.57", 93.6, ">46.14", 114.3),
    "fa-spsft128": ("15.21", 78.6, "22.41", 92.3),
}


# the paper's point, SPSFT's "mem" against LoRA's at about equal trainable parameters: row -> ref
SPSFT_PAIRS = {"spsft128": "lora64", "fa-spsft128": "fa-lora64"}


def _spsft_claims() -> tuple[Claim, ...]:
    claims = []
    for row, (mem2, params2, mem3, params3) in SPSFT_FIGURES.items():
        for model, mem, params in (("llama2_7b", mem2, params2), ("llama3_8b", mem3, params3)):
            text = f"{mem} GB" + (" (did not fit in 80 GB)" if mem.startswith(">") else "")
            value = float(mem.lstrip(">"))
            claims.append(Claim("spsft", row, "mem", "absolute", value, text, SPSFT_SOURCE, model=model))
            claims.append(
                Claim("spsft", row, "params", "absolute", params, f"{params}M", SPSFT_SOURCE, model=model)
            )
    for row, ref in SPSFT_PAIRS.items():
        for model, column in (("llama2_7b", 0), ("llama3_8b", 2)):
            value = float(SPSFT_FIGURES[row][column]) / float(SPSFT_FIGURES[ref][column])
            text = f"{value:.3f} ({SPSFT_FIGURES[row][column]} / {SPSFT_FIGURES[ref][column]} GB)"
            claims.append(
                Claim("spsft", row, "mem", "fraction", value, text, SPSFT_SOURCE, ref=ref, model=model)
            )
    return tuple(claims)


SPSFT_CLAIMS = _spsft_claims()
CLAIMS = {"aflora": AFLORA_CLAIMS, "light-peft": LIGHT_PEFT_CLAIMS, "spsft": SPSFT_CLAIMS}
