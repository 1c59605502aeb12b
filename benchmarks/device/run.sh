#!/usr/bin/env bash
# On the GPU machine, as a `run` call's command (carry [".device"], made by benchmarks/device/prepare.sh):
#
#     bash benchmarks/device/run.sh 520 benchmarks/radreg_retest.py --objectives mae --jobs 6
#
# Installs .device/whl, points the grids at .device/data (GENTUNE_IMAGES, GENTUNE_POINTS, GENTUNE_DATA), runs the grid
# for at most SECONDS (then SIGINT to it and its runs: a cell is written whole or not at all, and the machine's runs/
# are lost, so keep SECONDS well inside the call's timeout_s and the 10-minute limit), and sends back in $OUT:
#   log.txt            the grid's output
#   cells.tar.gz       every file under benchmarks/results/ that the grid wrote or rewrote
#   nvidia-smi.txt     the machine
#   files.txt          the archive's file list
# Here, afterwards: benchmarks/device/unpack.sh FILES_AT/cells.tar.gz, then commit the cells and rerender.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { echo "usage: $0 SECONDS SCRIPT [ARGS...]" >&2; exit 2; }
seconds="$1"; shift
out="${OUT:?run.sh runs on the device machine, where OUT is set}"
if ls .device/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/whl/*.whl || exit 2
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
data="$PWD/.device/data"
[ -e "$data/cifar10/cifar10_train_jpg.tar.gz" ] && export GENTUNE_IMAGES="$data/cifar10/cifar10_train_jpg.tar.gz"
points="$data/modelnet10/modelnet10_points1024_train.npz"
[ -e "$points" ] && export GENTUNE_POINTS="$points"
[ -d "$data/glue" ] && export GENTUNE_DATA="$data/glue"
# the grids look for the shared models beside the checkout, as here
[ -d .device/models ] && mkdir -p ../shared && ln -sfn "$PWD/.device/models" ../shared/models
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
marker="$(mktemp)"
sleep 1  # a cell written in the same second as the marker still counts as newer
timeout -s INT -k 30 "$seconds" python3 "$@" > "$out/log.txt" 2>&1
rc=$?
case "$rc" in 124|137) echo "== stopped after $seconds s (finished cells kept)" >> "$out/log.txt" ;; esac
find benchmarks/results -type f -newer "$marker" ! -name '*.tmp' > "$out/files.txt"  # no half-written cell
tar czf "$out/cells.tar.gz" -T "$out/files.txt"
echo "rc $rc; $(wc -l < "$out/files.txt") result files back in cells.tar.gz"
tail -20 "$out/log.txt"
exit "$rc"
