#!/usr/bin/env bash
set -e
cd /work/main
for spec in "sparsegpt-2of4-layerseq|--method sparsegpt --pattern 2:4" "sparsegpt-50-layerseq|--method sparsegpt --sparsity 0.5"; do
  name=${spec%%|*}; flags=${spec#*|}
  /usr/bin/time -f '%e s wall, %U s user, %S s sys, %M KB peak' -o results/pruning/$name.time.txt \
    out/shrink-exp2 compress -q --model models/SmolLM2-135M-Instruct.Q4_1.gguf $flags --sequential layer \
    --calib-ids out/calib_test_64x512.safetensors --out out/pruning/$name --force
  cp out/pruning/$name/report.json results/pruning/$name.report.json
  out/shrink-exp2 eval -q --model out/pruning/$name --text data/eval.txt --json > results/pruning/$name.eval.json.part
  mv results/pruning/$name.eval.json.part results/pruning/$name.eval.json
  echo "$name $(python3 -c "import json;print(json.load(open('results/pruning/$name.eval.json'))['perplexity'])")"
done
