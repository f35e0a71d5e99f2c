#!/usr/bin/env bash
# The type llama-quantize gives every tensor of a model for each file type ("mix": Q4_K_M, Q3_K_M,
# ...), without and with an importance matrix, into tests/fixtures/gguf_quant/mix_types_NAME.json,
# so that CI (no llama.cpp there) checks shrink's port of llama_tensor_get_type tensor by tensor
# (crates/shrink-formats/tests/llama_quantize_mix.rs).
#   tools/reference/mix_types_fixture.sh MODEL.gguf NAME
# DRY=1: llama-quantize --dry-run (types read from its log, no files written, general.file_type
# not recorded; the input is shrink's F16 export) — for the larger models.
# MIXES="IQ3_S IQ3_M ..." picks the file types (default: the legacy and K-quant ones, IQ4_NL, IQ4_XS).
# Needs tools/reference/build_llamacpp.sh (LLAMACPP_BIN), target/release/shrink, .venv-ref (gguf).
set -euo pipefail
M=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
NAME=${2:-smollm2}
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-out/export/llamacpp/build/bin}
D=out/mix/$NAME
mkdir -p "$D"
DRY=${DRY:-0}
if [ "$DRY" = 1 ]; then IN=$D/f16.gguf; DR=(--dry-run); IT=F16; else IN=$D/f32.gguf; DR=(); IT=F32; fi
[ -f $IN ] || $S export --model "$M" --format gguf --type $IT --out $IN -q
# the importance matrix only has to exist (it changes which rules apply, not the types' values)
[ -f $D/imatrix.gguf ] || $S export --model "$M" --format gguf --type Q8_0 --out $D/im-q8.gguf --force -q \
  --imatrix-calib data/calib.txt --imatrix-nsamples 4 --imatrix-seqlen 128 --imatrix-out $D/imatrix.gguf
MIXES=${MIXES:-"Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q2_K_S Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS"}
for T in $MIXES; do
  # Q2_K_S needs an importance matrix: llama-quantize refuses it without one
  nice "$B/llama-quantize" "${DR[@]}" $IN $D/lq-$T-plain.gguf $T 2 > $D/lq-$T-plain.log 2>&1 \
    || { echo "llama-quantize $T without an imatrix refused: $(grep -m1 -i 'imatrix\|error' $D/lq-$T-plain.log)"; rm -f $D/lq-$T-plain.gguf; }
  nice "$B/llama-quantize" "${DR[@]}" --imatrix $D/imatrix.gguf $IN $D/lq-$T-imatrix.gguf $T 2 > $D/lq-$T-imatrix.log 2>&1
done
.venv-ref/bin/python - "$D" "$NAME" "$M" "$DRY" $MIXES <<'PY'
import json, os, re, sys
import gguf
d, name, model, dry, mixes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5:]
def dry_types(log):
    types = {}
    for line in open(log):
        m = re.match(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s*(\S+),(.*)", line)
        if m:
            q = re.search(r"->.*\((\w+)\)", m.group(3))
            types[m.group(1)] = (q.group(1) if q else m.group(2).rstrip(",")).upper()
    return types
out = {"model": model, "source": "llama-quantize (llama.cpp vendored in llama-cpp-python 0.3.36), no --pure; imatrix from shrink export --imatrix-out", "mixes": {}}
for m in mixes:
    out["mixes"][m] = {}
    for mode in ["plain", "imatrix"]:
        if dry:
            log = os.path.join(d, f"lq-{m}-{mode}.log")
            if "refused" in open(log).read() or "requires an importance matrix" in open(log).read():
                continue
            out["mixes"][m][mode] = {"file_type": None, "types": dry_types(log)}
            continue
        if not os.path.exists(os.path.join(d, f"lq-{m}-{mode}.gguf")):
            continue
        r = gguf.GGUFReader(os.path.join(d, f"lq-{m}-{mode}.gguf"))
        ft = int(r.fields["general.file_type"].parts[-1][0])
        out["mixes"][m][mode] = {"file_type": ft, "types": {t.name: t.tensor_type.name for t in r.tensors}}
p = os.path.join("tests", "fixtures", "gguf_quant", f"mix_types_{name}.json")
with open(p, "w") as f:
    json.dump(out, f, indent=0, sort_keys=True)
print("wrote", p)
PY
rm -f $D/lq-*.gguf
