#!/usr/bin/env bash
# Here, after a `run` call of benchmarks/device/run.sh: its cells into benchmarks/results/ (a cell the machine
# rewrote replaces this checkout's: the machine redid it, e.g. a pretraining whose encoder was not there), listed.
#
#     benchmarks/device/unpack.sh /work/.device/.../cells.tar.gz
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 1 ] && [ -f "$1" ] || { echo "error: ${1:-}: no such file (usage: $0 cells.tar.gz)" >&2; exit 2; }
listing="$(tar tzf "$1")" || { echo "error: $1: not a readable tar.gz" >&2; exit 2; }
if grep -v '^benchmarks/results/' <<< "$listing" | grep -q . || grep -q '\.\.' <<< "$listing"; then
  echo "error: $1: holds files outside benchmarks/results/" >&2; exit 2
fi
tar xzvf "$1" | sed 's/^/  /'
git status --short benchmarks/results | wc -l | sed 's/$/ result files changed (git status)/'
