"""One command per efficiency table of the papers, measured at the papers' own shapes (no weights needed).

    python scripts/efficiency_tables.py aflora       # AFLoRA Fig. 3: LoRA / ELoRA / AFLoRA on DeBERTaV3-base
    python scripts/efficiency_tables.py light-peft   # Light-PEFT: LoRA / Adapter vs pruned, RoBERTa-large
    python scripts/efficiency_tables.py spsft        # SPSFT Table 7 "mem": Llama-2-7B and Llama-3-8B, fp32
    python scripts/efficiency_tables.py spsft --quick              # 1 layer, narrow, short sequences, 2 steps
    python scripts/efficiency_tables.py aflora --device cuda       # whole models on a GPU
    python scripts/efficiency_tables.py light-peft --layers 1 2    # fit per-layer costs, extrapolate
    python scripts/efficiency_tables.py spsft --render efficiency_tables/spsft.json   # rewrite, no measuring

Default depth: the whole model on a GPU. On the CPU (24 GiB here) a whole model's training step does not
fit (measured: LoRA on DeBERTaV3-base at 64 x 256 tokens keeps 23 GiB for backward, on Llama-2-7B at 2048
tokens 59 GiB with the weights), so the defaults there measure two depths and extrapolate: DeBERTaV3-base
2 and 4 of 12 blocks, RoBERTa-large 6 and 12 of 24 (Light-PEFT prunes PEFT modules over all blocks, so
its depths must be deep enough for a quarter of the modules to be a fair sample), Llama 1 and 2 of 32.
CPU timing: the measuring step, then 2 timed steps per
row in 2 interleaved rounds; CUDA: 3 warm-up, 1 measuring, 10 timed steps in 5 rounds.

Every model is the paper's architecture built from its stored config.json values with random weights
(``model.pretrained=false``): step time, FLOPs and memory do not depend on the weights' values. Rows are
built and measured as ``scripts/bench.py`` measures them (``peftlab/reporting/benchmark.py``): the
training loop's own step, the same batch for every row (random token ids of exactly the paper's length),
interleaved timing rounds, medians; memory counted exactly on CPU (tensors saved for backward + gradients
+ Adam state), the CUDA peak on a GPU. With two or more ``--layers`` every additive quantity (time, FLOPs,
memory, parameters) is fitted linearly in the number of blocks and extrapolated to the full depth; the fit
is printed. Prints our figure, the paper's and their ratio side by side, and writes the table as markdown
and CSV to ``--out`` (default ``efficiency_tables/``). The tables' rows are in ``tables.yaml`` beside this
file, the papers' figures in ``peftlab/reporting/paper_claims.yaml``.

Modules: ``specs`` (the tables and their settings), ``measure``, ``fit`` (per-layer fit, run averages),
``compare`` (ours against the paper), ``write`` (markdown, CSV, JSON), ``cli``.
"""
