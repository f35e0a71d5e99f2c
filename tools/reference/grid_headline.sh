#!/usr/bin/env bash
# Issue 14's headline: GPTQ rounded onto llama.cpp's own grids (`shrink compress --gguf-type`)
# against llama-imatrix + llama-quantize, the same calibration text on both sides, measured by
# llama.cpp's own llama-perplexity (perplexity and --kl-divergence against the F32 model).
#   tools/reference/grid_headline.sh [TYPE ...]        (default: Q4_K_M Q3_K_M IQ4_XS mix:Q2_K)
# A TYPE is a single type on every linear (llama-quantize --pure, token embedding Q8_0), a
# llama-quantize mix (Q4_K_M, Q3_K_M, Q5_K_M, Q4_K_S, ...: each tensor's type by llama.cpp's
# rules, on both sides), or mix:T for the mix a plain type name is in llama-quantize (mix:Q2_K).
# Env: MODEL (default the SmolLM2 GGUF), NSAMPLES (64), SEQLEN (512), CHUNKS (eval chunks of 512,
# default 40), LLAMACPP_BIN, OUT (default out/grid). Writes $OUT/headline.jsonl, one line per type.
# Needs tools/reference/build_llamacpp.sh to have run, and target/release/shrink.
set -euo pipefail
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-/work/llamacpp/build/bin}
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
NS=${NSAMPLES:-64}; SL=${SEQLEN:-512}; CH=${CHUNKS:-40}
D=${OUT:-out/grid}
TYPES=${*:-Q4_K_M Q3_K_M IQ4_XS mix:Q2_K}
T2=${THREADS:-2}
mkdir -p "$D"
# The reference: the model dequantized to F32 (no unquantized model ships in a package).
[ -f $D/f32.gguf ] || $S export --model "$M" --format gguf --type F32 --out $D/f32.gguf -q
# llama.cpp side: its importance matrix from the calibration text (NS chunks of SL tokens).
if [ ! -f $D/imatrix.gguf ]; then
  i0=$(date +%s.%N)
  "$B/llama-imatrix" -m $D/f32.gguf -f data/calib.txt -c $SL --chunks $NS -t $T2 -o $D/imatrix.gguf > $D/imatrix.log 2>&1
  echo "$(date +%s.%N) - $i0" | bc > $D/imatrix.seconds
fi
im_secs=$(cat $D/imatrix.seconds 2>/dev/null || echo 0)
[ -f $D/base.kld ] || "$B/llama-perplexity" -m $D/f32.gguf -f data/eval.txt -c 512 --chunks $CH -t $T2 -fa off \
  --kl-divergence-base $D/base.kld > $D/base.log 2>&1
ppl_f32=$(grep -o 'Final estimate: PPL = [0-9.]*' $D/base.log | awk '{print $NF}')
kld() { # model log -> "ppl kld_mean same_top"
  "$B/llama-perplexity" -m "$1" -t $T2 -fa off --kl-divergence-base $D/base.kld --kl-divergence > "$2" 2>&1
  python3 - "$2" <<'PY'
import re,sys
t=open(sys.argv[1]).read()
ppl=re.search(r'Mean PPL\(Q\)\s*:\s*([0-9.]+)',t).group(1)
k=re.search(r'Mean\s+KLD:\s*([0-9.]+)',t).group(1)
top=re.search(r'Same top p:\s*([0-9.]+)',t).group(1)
print(ppl,k,top)
PY
}
res=$D/headline.jsonl
for TT in $TYPES; do
  T=${TT#mix:}
  case "$TT" in
    mix:*) lqa=(); ca=(--gguf-mix); ea=(--type $T --mix); T=$T-mix ;;
    # type names, not mixes. llama-quantize's IQ2_S is a file type whose main type is IQ2_XS:
    # pure IQ2_S tensors come from its IQ2_M file type with --pure
    # (IQ1_S, IQ1_M: type names that look like mixes)
    IQ2_S|IQ3_S|IQ1_S|IQ1_M) lqa=(--pure --token-embedding-type q8_0); ca=(); ea=(--token-embedding-type Q8_0) ;;
    *_S|*_M|*_L) lqa=(); ca=(); ea=() ;;
    *) lqa=(--pure --token-embedding-type q8_0); ca=(); ea=(--token-embedding-type Q8_0) ;;
  esac
  LQT=${T%-mix}; [ "$TT" = IQ2_S ] && LQT=IQ2_M
  q0=$(date +%s.%N)
  "$B/llama-quantize" "${lqa[@]}" --imatrix $D/imatrix.gguf $D/f32.gguf $D/lq-$T.gguf $LQT 2 \
    > $D/lq-$T.log 2>&1
  q1=$(date +%s.%N)
  t0=$(date +%s.%N)
  "$S" compress --model "$M" --method gptq --gguf-type ${T%-mix} "${ca[@]}" --calib data/calib.txt --nsamples $NS --seqlen $SL \
    --out $D/gptq-$T --force -q
  "$S" export --model $D/gptq-$T --format gguf "${ea[@]}" --out $D/sh-$T.gguf --force -q
  t1=$(date +%s.%N)
  read lp lk lt < <(kld $D/lq-$T.gguf $D/lq-$T.kld.log)
  read sp sk st < <(kld $D/sh-$T.gguf $D/sh-$T.kld.log)
  python3 - "$T" "$ppl_f32" "$lp" "$lk" "$lt" "$sp" "$sk" "$st" $(stat -c %s $D/lq-$T.gguf $D/sh-$T.gguf) \
      "$(echo "$t1 - $t0" | bc)" "$(echo "$q1 - $q0 + $im_secs" | bc)" >> $res <<'PY'
import json,sys
T,f,lp,lk,lt,sp,sk,st,lb,sb,secs,lsecs=sys.argv[1:]
f,lp,lk,lt,sp,sk,st=map(float,(f,lp,lk,lt,sp,sk,st))
print(json.dumps({"type":T,"ppl_f32":f,
  "llama_quantize":{"bytes":int(lb),"ppl":lp,"kld":lk,"same_top_pct":lt,"seconds_imatrix_and_quantize":float(lsecs)},
  "shrink_gptq":{"bytes":int(sb),"ppl":sp,"kld":sk,"same_top_pct":st,"seconds":float(secs)},
  "ppl_gap_closed":(lp-sp)/(lp-f) if lp!=f else None,
  "kld_reduction":1-sk/lk if lk else None}))
PY
  tail -1 $res
done
