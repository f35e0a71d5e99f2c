#!/usr/bin/env bash
# End to end time and peak memory of shrink and llm-compressor on the same pruning jobs, run back
# to back (shrink, peer, shrink, peer) on an otherwise idle machine, so the ratios are fair.
# Same model, calibration tokens (64 x 512) and evaluation as pruning_table.sh / pruning_peer.sh;
# each run also evaluates its output, so the timing runs double as a reproducibility check.
# Results: results/timing/*.time.txt (/usr/bin/time), *.report.json, *.eval.json; summary printed
# by `python3 tools/experiments/pruning_timing.py`.
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${T:-results/timing}
mkdir -p "$T" out/bin
cp "${BIN:-target/release/shrink}" out/bin/shrink-timing
{ nproc; uptime; grep -m1 "model name" /proc/cpuinfo; } > "$T/machine.txt"
for job in sparsegpt-50 wanda-50 sparsegpt-2of4; do
  echo "load before shrink $job: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$T/machine.txt"
  BIN=out/bin/shrink-timing RES=$T OUT=out/timing tools/experiments/pruning_table.sh "$job"
  echo "load before llmc-$job: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$T/machine.txt"
  BIN=out/bin/shrink-timing RES=$T POUT=out/timing-peer tools/experiments/pruning_peer.sh "llmc-$job"
done
python3 tools/experiments/pruning_timing.py "$T"
