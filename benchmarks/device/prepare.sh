#!/usr/bin/env bash
# Here, before the first `run` call of a session lent a GPU machine: what a grid needs there and the machine lacks,
# into .device/ (git-ignored through .git/info/exclude; name it in the call's `carry`).
#
#     benchmarks/device/prepare.sh cifar10              # the image grids (pretrain, radreg*, diagnostics)
#     benchmarks/device/prepare.sh modelnet10           # point_grid.py
#     benchmarks/device/prepare.sh glue                 # text grids (splade-tiny only: MiniLM is 88 MB, over the limit)
#
# The machine's image has torch, transformers, accelerate, scikit-learn, Pillow... (see the device tool's KINDS.md) but
# not omegaconf, nor datasets and its pins, nor seqeval: their wheels go to .device/whl. The shared data sets go to
# .device/data/NAME (what travels is at most 64 MiB: cifar10 16 MB, modelnet10 23 MB, glue 29 MB, splade-tiny 18 MB).
# Then run, on the machine, benchmarks/device/run.sh (its header says how).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: $0 cifar10|modelnet10|glue ..." >&2; exit 2; }
shared="${SHARED:-../shared}"
exclude="$(git rev-parse --git-path info/exclude)"
rm -rf .device/whl  # one version of each wheel: two stop the machine's whole install
mkdir -p "$(dirname "$exclude")" .device/whl .device/data
grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
py=".venv/bin/python"
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
download() {  # the versions this checkout's tests pass with, as Python 3.12 wheels (the machine's Python)
  local specs=()
  for name in "$@"; do specs+=("$name==$(version "$name")"); done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/whl "${specs[@]}" 2>&1 | grep -v "^WARNING: Location" || true
}
download omegaconf
for name in "$@"; do
  case "$name" in
    cifar10|modelnet10) ;;
    glue)
      download datasets dill multiprocess
      "$py" -m pip wheel -q --no-deps -w .device/whl "seqeval==$(version seqeval)"  # an sdist only: built here
      mkdir -p .device/models && rm -rf .device/models/splade_tiny_bert_mlm
      cp -r "$shared/models/splade_tiny_bert_mlm" .device/models/ && chmod -R u+w .device/models ;;
    *) echo "error: $name: not one of cifar10, modelnet10, glue" >&2; exit 2 ;;
  esac
  [ -d "$shared/data/$name" ] || { echo "error: $shared/data/$name: no such folder" >&2; exit 2; }
  rm -rf ".device/data/$name" && cp -r "$shared/data/$name" .device/data/ && chmod -R u+w ".device/data/$name"
done
du -sh .device | sed 's/\t/ in /'
echo "carry: [\".device\"]   command: bash benchmarks/device/run.sh SECONDS benchmarks/GRID.py ARGS..."
