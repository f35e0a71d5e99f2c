#!/bin/bash
# Perplexity table on the default model: first 16384 tokens of data/eval.txt (32 windows of 512),
# plus the full split for the W4 g64 headline.
cd "$(dirname "$0")/../.."
S=./target/release/shrink
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p out/table
run() { # name maxtokens args...
  name=$1; mt=$2; shift 2
  rm -rf out/table/$name
  /usr/bin/time -v $S compress --model $M --out out/table/$name -q "$@" > out/table/$name.log 2>&1
  $S eval --model out/table/$name --text data/eval.txt --json -q $mt > out/table/$name.eval.json 2>&1
  echo "$name $mt $(grep -o '"perplexity":[0-9.]*' out/table/$name.eval.json) $(grep -E 'Elapsed|Maximum' out/table/$name.log | tr -s ' ' | tr '\n' ' ')" >> out/table/runs.txt
  rm -f out/table/$name/model.safetensors out/table/$name/quantized.safetensors
}
G="--calib data/calib.txt --nsamples 64 --seqlen 512 --seed 0"
R="--calib data/calib.txt --nsamples 8 --seqlen 512 --seed 0"
MT="--max-tokens 16384"
$S eval --model $M --text data/eval.txt --json -q $MT > out/table/original.eval.json
run gptq-w4g64 "" --method gptq --bits 4 --group-size 64 $G
run gptq-w3g64 "$MT" --method gptq --bits 3 --group-size 64 $G
run rtn-w3g64 "$MT" --method rtn --bits 3 --group-size 64 $R
run gptq-w4g128 "$MT" --method gptq --bits 4 --group-size 128 $G
run rtn-w4g128 "$MT" --method rtn --bits 4 --group-size 128 $R
run gptq-w4pc "$MT" --method gptq --bits 4 $G
run rtn-w4pc "$MT" --method rtn --bits 4 $R
run gptq-w2g64 "$MT" --method gptq --bits 2 --group-size 64 $G
run rtn-w2g64 "$MT" --method rtn --bits 2 --group-size 64 $R
run rtn-w4g64 "$MT" --method rtn --bits 4 --group-size 64 $R
run gptq-w4g64-sym "$MT" --method gptq --bits 4 --group-size 64 --sym $G
run rtn-w4g64-sym "$MT" --method rtn --bits 4 --group-size 64 --sym $R
run gptq-w4g32 "$MT" --method gptq --bits 4 --group-size 32 $G
run rtn-w4g32 "$MT" --method rtn --bits 4 --group-size 32 $R
