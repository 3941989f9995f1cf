"""What runs measured, read back: results, tables against the papers, sweeps, figures and benchmarks."""
