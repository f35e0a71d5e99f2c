#!/bin/bash
# Issue 16's table on the default model: each method's perplexity, KL divergence and top-1
# agreement with the original on data/eval.txt (compress --eval: GPTQ protocol, seqlen 512, the
# whole split), and acc / acc_per_char on ARC-Easy, HellaSwag, PIQA (rc_0shot) and LAMBADA
# (greedy acc), the first $LIMIT documents of each (compress --eval-tasks; the original scored
# once through --eval-tasks-cache). Calibration: 64 x 512 tokens of data/calib.txt, seed 0.
# The reference is the Q4_1 GGUF dequantized (no unquantized SmolLM2 is available here).
# Usage: tools/experiments/method_table.sh [LIMIT]   (default 200); results in out/method-table/.
set -u
cd "$(dirname "$0")/../.."
LIMIT=${1:-200}
O=out/method-table
mkdir -p $O
S=$O/shrink
cp target/release/shrink $S # a copy: rebuilding the tree does not change a running table
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
C="--calib data/calib.txt --nsamples 64 --seqlen 512 --seed 0"
E="--eval data/eval.txt --eval-tasks arc_easy,hellaswag,piqa,lambada:bpb_0shot --eval-tasks-limit $LIMIT --eval-tasks-cache $O/original_tasks.jsonl"
run() { # name args...
  name=$1; shift
  [ -f $O/$name.report.json ] && return
  rm -rf $O/$name
  /usr/bin/time -v $S compress --model $M --out $O/$name -q $C $E "$@" > $O/$name.log 2>&1 \
    && cp $O/$name/report.json $O/$name.report.json
  rm -rf $O/$name
}
run rtn-w4g64 --method rtn --bits 4 --group-size 64
run gptq-w4g64 --method gptq --bits 4 --group-size 64
run gptq-w3g64 --method gptq --bits 3 --group-size 64
run sparsegpt-50 --method sparsegpt --sparsity 0.5
run wanda-50 --method wanda --sparsity 0.5
run sparsegpt-2of4 --method sparsegpt --pattern 2:4
run sparsegpt-50-w4g64 --method sparsegpt --sparsity 0.5 --bits 4 --group-size 64
python3 tools/experiments/method_table.py $O
