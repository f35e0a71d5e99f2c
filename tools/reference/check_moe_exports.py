"""Mixture-of-Experts exports loaded by the real loaders: compressed-tensors, transformers, gguf-py, llama.cpp.

For each tiny random MoE fixture (tests/fixtures/tiny/qwen3_moe_sparse, mixtral: transformers'
own `save_pretrained` output) this script
1. copies it with a 128-byte BPE tokenizer.json (the tests' `tokenizer_json(128)`);
2. `shrink compress --method gptq --bits 4 --group-size 32 --sym` on a calibration text that
   leaves experts with few tokens, so the report's per-expert counts and policies show;
3. `shrink export --format compressed-tensors`, then
   - every expert linear has a packed weight (none left dense; only the router `gate` is ignored);
   - compressed-tensors' `PackedQuantizationCompressor.decompress` gives shrink's dequantized
     weights bit for bit;
   - transformers (`AutoModelForCausalLM.from_pretrained`, which fuses the per-expert linears of
     Qwen3-MoE/Mixtral into its 3-D expert parameters) gives the same logits as shrink's compressed
     model (`shrink eval --logits-out` on the compress directory);
4. `shrink export --format gguf --type Q4_0` (the sym g32 codes carry into Q4_0 blocks), then
   - gguf-py's `GGUFReader` reads it: every `ffn_*_exps` tensor is Q4_0, and
     `gguf.quants.dequantize` of each expert slice equals shrink's weight;
   - llama.cpp's `llama-perplexity` loads it, and on an F32 copy of it (`llama-quantize
     --allow-requantize m.gguf m.f32.gguf F32`, so that llama.cpp does not quantize activations to
     Q8_0) its perplexity equals `shrink eval --protocol llama.cpp` on the Q4_0 file within 0.1%.

Prints one JSON object per fixture and writes all of them to --out; exit status 0 when every
check passes.

Run (compressed-tensors, transformers and gguf live in .venv-llmc; llama.cpp from
tools/reference/build_llamacpp.sh; `cargo build --release` first):
    .venv-llmc/bin/python tools/reference/check_moe_exports.py --out results/families/moe-exports.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_json(n):
    sp = bytes_to_unicode()
    vocab = {sp[b % 256]: b for b in range(n)}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def last_json(s):
    return json.loads([l for l in s.splitlines() if l.startswith("{")][-1])


def check(name, a, torch):
    import numpy as np
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    work = os.path.join(C.repo_path(a.work), name)
    shutil.rmtree(work, ignore_errors=True)
    src = os.path.join(work, "hf")
    os.makedirs(src)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(C.FIXTURES_TINY, name, f), src)
    with open(os.path.join(src, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(128), f)
    calib = os.path.join(work, "calib.txt")
    with open(calib, "w") as f:
        f.write("".join(f"sample {i} of calibration text, with words and numbers {i * 7 % 13}. " for i in range(400)))
    text = os.path.join(work, "eval.txt")
    with open(text, "w") as f:
        f.write("".join(f"evaluation line {i}: the quick brown fox {i * 3 % 11} jumps. " for i in range(60)))
    q = os.path.join(work, "q")
    run([a.shrink, "compress", "-q", "--model", src, "--method", "gptq", "--bits", "4", "--group-size", "32",
         "--sym", "--calib", calib, "--nsamples", "8", "--seqlen", "32", "--out", q])
    rep = json.load(open(os.path.join(q, "report.json")))
    res = {"fixture": name}

    # the report's per-expert token counts
    counts = {}
    for layer in rep["layers"]:
        for lin in layer["linears"]:
            if ".experts." in lin["name"] and lin["name"].endswith(("down_proj.weight", "w2.weight")):
                counts[lin["name"]] = [lin["tokens"], lin.get("note")]
    res["report_expert_tokens_and_notes"] = counts
    ref = load_file(os.path.join(q, "model.safetensors"))

    # compressed-tensors
    ct = os.path.join(work, "ct")
    run([a.shrink, "export", "-q", "--model", q, "--format", "compressed-tensors", "--out", ct])
    cfg = json.load(open(os.path.join(ct, "config.json")))
    qc = cfg["quantization_config"]
    from safetensors.torch import load_file as load_torch

    sd = load_torch(os.path.join(ct, "model.safetensors"))
    bases = sorted(k[: -len(".weight_packed")] for k in sd if k.endswith(".weight_packed"))
    expert_linears = sorted(k[: -len(".weight")] for k in ref if ".experts." in k and k.endswith(".weight"))
    dense_experts = [b for b in expert_linears if b not in bases]
    group = next(iter(qc["config_groups"].values()))
    exact, worst = 0, 0.0
    for b in bases:
        local = {k[len(b) + 1:]: v for k, v in sd.items() if k.startswith(b + ".")}
        w = PackedQuantizationCompressor.decompress(local, QuantizationScheme(**group))["weight"].float().numpy()
        r = ref[b + ".weight"]
        exact += int(np.array_equal(w, r))
        worst = max(worst, float(np.abs(w - r).max()))
    res["compressed_tensors"] = {
        "packed_linears": len(bases), "expert_linears": len(expert_linears),
        "experts_left_dense": dense_experts, "ignore": qc.get("ignore"),
        "decompress_bit_identical": exact, "decompress_max_abs_diff": worst,
    }

    # transformers on the CT directory vs shrink on the compress directory: same logits
    r = run([a.shrink, "eval", "--model", q, "--text", text, "--seqlen", "4096",
             "--logits-out", os.path.join(work, "shrink_logits.safetensors"), "--json"])
    ids = last_json(r.stdout)["input_ids"]
    ls = load_file(os.path.join(work, "shrink_logits.safetensors"))["logits"]
    model = AutoModelForCausalLM.from_pretrained(ct, dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        lt = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    d = np.abs(ls.astype(np.float64) - lt.astype(np.float64))
    res["transformers_ct"] = {
        "class": type(model).__name__, "tokens": len(ids),
        "max_abs_logit_diff": float(d.max()), "top1_agreement": float((ls.argmax(1) == lt.argmax(1)).mean()),
    }

    # GGUF: gguf-py reads every expert as Q4_0 and dequantizes it to shrink's weights
    gg = os.path.join(work, "m.gguf")
    run([a.shrink, "export", "-q", "--model", q, "--format", "gguf", "--type", "Q4_0", "--tokenizer-pre", "gpt-2",
         "--out", gg])
    rd = GGUFReader(gg)
    exps = {t.name: t for t in rd.tensors if "_exps" in t.name}
    types = sorted({t.tensor_type.name for t in exps.values()})
    hf_name = {"ffn_gate_exps": ("gate_proj", "w1"), "ffn_up_exps": ("up_proj", "w3"), "ffn_down_exps": ("down_proj", "w2")}
    g_exact, g_total, g_worst = 0, 0, 0.0
    for tname, t in exps.items():
        blk = int(tname.split(".")[1])
        kind = tname.split(".")[2]
        deq = dequantize(t.data, t.tensor_type)  # [experts, rows, cols]
        for e in range(deq.shape[0]):
            cands = [k for k in ref if k.startswith(f"model.layers.{blk}.") and f".experts.{e}." in k
                     and any(k.endswith(f".{h}.weight") for h in hf_name[kind])]
            assert len(cands) == 1, (tname, e, cands)
            r = ref[cands[0]]
            # Q4_0 stores each block's scale as f16: shrink's codes times the f16-rounded scale
            sc = sd[cands[0][: -len(".weight")] + ".weight_scale"].float().numpy()  # [rows, groups]
            sc = np.repeat(sc, r.shape[1] // sc.shape[1], axis=1)
            codes = np.round(r / sc)
            want = (codes * sc.astype(np.float16).astype(np.float32)).astype(np.float32)
            g_total += 1
            g_exact += int(np.array_equal(deq[e].astype(np.float32), want))
            g_worst = max(g_worst, float(np.abs(deq[e].astype(np.float32) - r).max()))
    res["gguf_py"] = {"expert_tensors": len(exps), "expert_types": types, "expert_slices": g_total,
                      "codes_times_f16_scale_bit_identical": g_exact, "max_abs_diff_vs_f32_scales": g_worst,
                      "router_type": next((t.tensor_type.name for t in rd.tensors if t.name.endswith("ffn_gate_inp.weight")), None)}

    # llama.cpp loads it: perplexity equals shrink's llama.cpp protocol on the same file
    # llama.cpp multiplies Q4_0 weights with Q8_0-quantized activations; an F32 copy of the file
    # (llama-quantize --allow-requantize ... F32) makes it compute in f32 like shrink.
    import re

    def llama_ppl(path):
        r = subprocess.run([a.llama_perplexity, "-m", path, "-f", text, "-c", "64", "-b", "64", "-t", "2"],
                           capture_output=True, text=True)
        return r, re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)

    r_q, m_q = llama_ppl(gg)
    g32 = os.path.join(work, "m.f32.gguf")
    run([a.llama_quantize, "--allow-requantize", gg, g32, "F32"])
    r, m = llama_ppl(g32)
    s = last_json(run([a.shrink, "eval", "--model", gg, "--text", text, "--seqlen", "64", "--protocol", "llama.cpp",
                       "--json"]).stdout)
    res["llama_cpp"] = {"loaded": r_q.returncode == 0 and m_q is not None,
                        "llama_perplexity_q4_0_file": float(m_q.group(1)) if m_q else None,
                        "llama_perplexity_f32_copy": float(m.group(1)) if m else None,
                        "shrink_llama_cpp_protocol": s["perplexity"],
                        "stderr_tail": None if m and m_q else (r_q.stderr[-800:] + r.stderr[-800:])}
    res["ok"] = bool(
        not dense_experts and exact == len(bases) and len(bases) > 0
        and res["transformers_ct"]["top1_agreement"] == 1.0 and res["transformers_ct"]["max_abs_logit_diff"] < 1e-3
        and types == ["Q4_0"] and g_exact == g_total
        and m_q is not None and m is not None and abs(float(m.group(1)) / s["perplexity"] - 1) < 1e-3
    )
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default="qwen3_moe_sparse,mixtral")
    ap.add_argument("--shrink", default=os.path.join(C.REPO_ROOT, "target/release/shrink"))
    ap.add_argument("--llama-perplexity", default="/work/llamacpp/build/bin/llama-perplexity")
    ap.add_argument("--llama-quantize", default="/work/llamacpp/build/bin/llama-quantize")
    ap.add_argument("--work", default="out/moe-exports")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch = C.setup_torch()
    import compressed_tensors
    import gguf
    import transformers

    results = [check(n, a, torch) for n in a.fixtures.split(",")]
    out = {"versions": {"transformers": transformers.__version__, "compressed_tensors": compressed_tensors.__version__,
                        "gguf": getattr(gguf, "__version__", None), "torch": torch.__version__},
           "fixtures": results, "ok": all(r["ok"] for r in results)}
    C.write_result(out, a.out)
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
