#!/usr/bin/env bash
# Every grid of docs/results.md, in dependency order, one heavy job at a time, then the page itself. Each grid
# skips its finished cells and resumes an interrupted one, so rerunning this script after a stop goes on where the
# last run ended. The grids refresh docs/results.md as their cells finish; the last step renders it once more from
# every cell (benchmarks/render_results.py: benchmarks/results_template.md filled with each grid's tables).
#
#     nohup benchmarks/run_all.sh > logs/run_all.log 2>&1 &     # about 14 h on 2 CPU cores from scratch
#
# Needs GENTUNE_DATA (the GLUE tree; default ../shared/data/glue) and the CIFAR-10 archive of pretrain_grid.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export GENTUNE_DATA="${GENTUNE_DATA:-../shared/data/glue}" HF_HUB_OFFLINE=1
PY="${PYTHON:-.venv/bin/python}"
step() { echo "== $(date -u +%FT%TZ) $*"; "$PY" "$@"; }
step benchmarks/finetune_grid.py                          # vanilla (issue 2)
for reg in smart r3f smart-adv; do                        # issue 3
  step benchmarks/finetune_grid.py --regularizer "$reg"
done
step benchmarks/pretrain_grid.py                          # issue 4: MAE, context encoder, lr choice, 4 arms x 2 tasks x 5 seeds
step benchmarks/radreg_grid.py --stage tune               # issue 5: lambda and head on the tuning split
step benchmarks/radreg_grid.py                            # issue 5: MAE / context encoder + RadReg per task, then fine-tuning
step benchmarks/diagnostics_study.py                      # issue 6: needs the runs above
step benchmarks/render_results.py                         # docs/results.md and docs/img/ from every cell
echo "== $(date -u +%FT%TZ) all grids done"
