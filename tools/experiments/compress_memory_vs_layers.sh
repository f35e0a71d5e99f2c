#!/bin/bash
cd "$(dirname "$0")/../.."
for L in 15 30; do
  rm -rf out/mem-$L
  /usr/bin/time -v ./target/release/shrink compress --model models/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --bits 4 --group-size 64 --calib data/calib.txt --nsamples 32 --seqlen 512 --layers $L --out out/mem-$L -q > out/mem-$L.log 2>&1
  echo "layers $L $(grep -E 'Elapsed|Maximum' out/mem-$L.log | tr -s ' ' | tr '\n' ' ') pipeline_peak_rss_mb=$(grep -o '"peak_rss_mb":[0-9.]*' out/mem-$L/report.json)" >> out/mem.txt
  rm -f out/mem-$L/model.safetensors out/mem-$L/quantized.safetensors
done
