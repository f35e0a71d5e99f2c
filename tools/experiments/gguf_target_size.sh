#!/usr/bin/env bash
# Issue 13's "the GGUF written for a target size beats llama-quantize's Q4_K_M at equal or
# smaller file size": for each llama-quantize file of tools/reference/grid_headline.sh
# ($OUT/lq-T.gguf, made with llama-imatrix's matrix from the same calibration text), shrink
# searches per-linear llama.cpp types under --target-size = that file's bytes (GPTQ onto each
# type's grid, the marginal-return greedy over profiled errors), exports the GGUF and measures
# both with llama-perplexity --kl-divergence against the same F32 reference.
#   tools/experiments/gguf_target_size.sh [T ...]     (default: Q4_K_M Q3_K_M)
# Env: as grid_headline.sh (MODEL, NSAMPLES, SEQLEN, OUT, LLAMACPP_BIN), TYPES_SEARCHED (the
# candidates). Run grid_headline.sh for the same T first. Appends to $OUT/target_size.jsonl.
set -euo pipefail
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-/work/llamacpp/build/bin}
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
NS=${NSAMPLES:-64}; SL=${SEQLEN:-512}
D=${OUT:-out/grid}
C=${TYPES_SEARCHED:-Q2_K,Q3_K,Q4_0,Q4_1,IQ4_NL,Q4_K,Q5_0,Q5_1,Q5_K,Q6_K,Q8_0}
T2=${THREADS:-2}
[ -f $D/base.kld ] || { echo "run tools/reference/grid_headline.sh first (no $D/base.kld)" >&2; exit 2; }
kld() { # model log -> "ppl kld_mean same_top"
  "$B/llama-perplexity" -m "$1" -t $T2 -fa off --kl-divergence-base $D/base.kld --kl-divergence > "$2" 2>&1
  python3 - "$2" <<'PY'
import re,sys
t=open(sys.argv[1]).read()
print(re.search(r'Mean PPL\(Q\)\s*:\s*([0-9.]+)',t).group(1),
      re.search(r'Mean\s+KLD:\s*([0-9.]+)',t).group(1),
      re.search(r'Same top p:\s*([0-9.]+)',t).group(1))
PY
}
for T in ${*:-Q4_K_M Q3_K_M}; do
  ref=$D/lq-$T.gguf
  bytes=$(stat -c %s $ref)
  t0=$(date +%s.%N)
  "$S" compress --model "$M" --method gptq --target-size $bytes --search-types $C \
    --calib data/calib.txt --nsamples $NS --seqlen $SL --out $D/size-$T --force -q
  "$S" export --model $D/size-$T --format gguf --out $D/size-$T.gguf --force -q
  t1=$(date +%s.%N)
  read lp lk lt < <(kld $ref $D/lq-$T.kld.log)
  read sp sk st < <(kld $D/size-$T.gguf $D/size-$T.kld.log)
  python3 - "$T" "$lp" "$lk" "$lt" "$sp" "$sk" "$st" $bytes $(stat -c %s $D/size-$T.gguf) \
      "$(echo "$t1 - $t0" | bc)" "$D/size-$T/report.json" >> $D/target_size.jsonl <<'PY'
import json,sys,collections
T,lp,lk,lt,sp,sk,st,lb,sb,secs,rep=sys.argv[1:]
a=json.load(open(rep))["allocation"]
types=collections.Counter(l["gguf_type"] for l in a["linears"])
print(json.dumps({"reference":T,"candidates":a["candidates"],
  "llama_quantize":{"bytes":int(lb),"ppl":float(lp),"kld":float(lk),"same_top_pct":float(lt)},
  "shrink_search":{"bytes":int(sb),"predicted_bytes":a["target_size"]["predicted_file_bytes"],
    "ppl":float(sp),"kld":float(sk),"same_top_pct":float(st),"seconds":float(secs),
    "profile_seconds":a["profile_seconds"],"types":dict(types)}}))
PY
  tail -1 $D/target_size.jsonl
done
