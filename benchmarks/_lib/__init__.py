"""What the benchmark scripts share; no module here imports a benchmark script.

- :mod:`paths`: where results, runs and the results page live.
- :mod:`cells`: result cells, one JSON file each: atomic writes, reading back, skipping finished ones.
- :mod:`runner`: a ``gentune`` subprocess, several calls at once, re-rendering docs/results.md.
- :mod:`provenance`: the machine, its matmul rate, the git commit.
- :mod:`stats`: mean ± std over seeds, paired differences.
- :mod:`tables`: markdown table rows.
- :mod:`template`: the ``{{key}}`` placeholders of benchmarks/results_template.md.
- :mod:`images`: the CIFAR-10 protocol of the image benchmarks and their cell runners.
- :mod:`curves`: fine-tuning curves: means over seeds, plots.
"""
