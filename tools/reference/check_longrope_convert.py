"""Phi-3 LongRoPE through shrink and back, checked by transformers and llama.cpp.

The tiny `phi3_longrope` fixture (tools/reference/tiny_models.py: original_max_position_embeddings
32, max 128, random short and long factors, derived attention factor) has a GGUF written by
llama.cpp's converter (tests/fixtures/tiny/phi3_longrope/model.f32.gguf: the
`rope_factors_long.weight` / `rope_factors_short.weight` tensors, `phi3.rope.scaling.attn_factor`).

1. transformers: `shrink convert` turns that GGUF into a Hugging Face directory (config.json with
   `longrope`, both factor lists, attention_factor); transformers loads it and its logits are
   compared with the fixture's references, for the 24-token sequences (short factors) and the
   48-token ones (long factors).
2. llama.cpp (optional, --llama-perplexity BIN). llama.cpp cannot load the converter's GGUF (its
   synthetic SentencePiece vocabulary has no newline byte token), so `shrink export --format gguf
   --tokenizer-pre smollm` writes one from the fixture plus a byte-level tokenizer.json of 128
   single-byte tokens (the one crates/shrink-cli/tests/common builds), with shrink's
   rope_factors tensors and phi3.rope.scaling keys. llama-perplexity writes its logits for that
   file (`--kl-divergence-base`) at contexts 16 and 48; `shrink eval --reference-logits` reads
   them with the llama.cpp protocol (chunks of n_ctx tokens) and reports the KL divergence and
   top-1 agreement. llama.cpp switches on its context per sequence, n_ctx_seq, which it pads to
   a multiple of 256: 256 > 32 for both, so it uses the long factors even for the 16-token chunks,
   where shrink (and transformers) use the short ones. So the same run is repeated on a copy
   with phi3.rope.scaling.original_context_length set to 512 (gguf-set-metadata): there
   llama.cpp uses the short factors (256 <= 512), as shrink does for both lengths. Expected:
   KL ~ 0 wherever both use the same factors, clearly > 0 for original 32 at context 16.

Run (`cargo build --release` first; llama-perplexity from tools/reference/build_llamacpp.sh):
    .venv-ref/bin/python tools/reference/check_longrope_convert.py \
        [--llama-perplexity /path/to/llama-perplexity] [--shrink target/release/shrink] [--out FILE]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

def byte_tokenizer(n):
    """A byte-level BPE tokenizer.json of n single-byte tokens (bytes 0..n-1), no merges: the one
    crates/shrink-cli/tests/common/mod.rs `tokenizer_json` writes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    chars = {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}
    vocab = {chars[b]: b for b in range(n)}
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": bl, "post_processor": None, "decoder": dict(bl, add_prefix_space=True),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


TEXT = "".join(f"the quick brown fox {i} jumps over the lazy dog, again. " for i in range(200))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shrink", default=os.path.join(C.REPO_ROOT, "target/release/shrink"))
    ap.add_argument("--llama-perplexity", help="llama.cpp's llama-perplexity binary (step 2 is skipped without it)")
    ap.add_argument("--out", help="also write the JSON result here")
    args = ap.parse_args()
    torch = C.setup_torch()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    fx = os.path.join(C.FIXTURES_TINY, "phi3_longrope")
    gguf = os.path.join(fx, "model.f32.gguf")
    os.makedirs(os.path.join(C.REPO_ROOT, "out"), exist_ok=True)
    work = tempfile.mkdtemp(dir=os.path.join(C.REPO_ROOT, "out"))
    out = os.path.join(work, "conv")
    subprocess.run([args.shrink, "convert", "-q", gguf, "--out", out], check=True)
    ref = load_file(os.path.join(fx, "reference.safetensors"))
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    res = {"rope_scaling": json.load(open(os.path.join(out, "config.json")))["rope_scaling"], "transformers": {}}
    ok = True
    for ids, logits in (("input_ids", "logits"), ("input_ids_long", "logits_long")):
        with torch.no_grad():
            lt = m(ref[ids]).logits
        d = (lt - ref[logits]).abs().max().item()
        top = (lt.argmax(-1) == ref[logits].argmax(-1)).float().mean().item()
        res["transformers"][logits] = {"tokens": list(ref[ids].shape), "max_abs_logit_diff": d, "top1_agreement": top}
        ok = ok and d < 1e-4 and top == 1.0
    res["transformers_attention_scaling"] = m.model.rotary_emb.attention_scaling

    if args.llama_perplexity:
        text = os.path.join(work, "text.txt")
        with open(text, "w") as f:
            f.write(TEXT)
        hf = os.path.join(work, "hf")
        os.makedirs(hf)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(fx, f), hf)
        with open(os.path.join(hf, "tokenizer.json"), "w") as f:
            json.dump(byte_tokenizer(128), f)
        gguf = os.path.join(work, "shrink-export.gguf")
        subprocess.run([args.shrink, "export", "-q", "--model", hf, "--format", "gguf", "--type", "F32",
                        "--tokenizer-pre", "smollm", "--out", gguf], check=True)
        # a copy whose original context (512) exceeds every context llama.cpp uses here
        gguf512 = os.path.join(work, "shrink-export-orig512.gguf")
        shutil.copy(gguf, gguf512)
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "gguf-set-metadata"), "--force", gguf512,
                        "phi3.rope.scaling.original_context_length", "512"], check=True, capture_output=True)
        res["llama.cpp"] = {}
        for model, orig in ((gguf, 32), (gguf512, 512)):
            for ctx in (16, 48):
                key = f"original {orig}, ctx {ctx}"
                base = os.path.join(work, f"base-{orig}-{ctx}.kld")
                log = base + ".log"
                p = subprocess.run(
                    [args.llama_perplexity, "-m", model, "-f", text, "-c", str(ctx), "-b", str(ctx), "-t", "2",
                     "--kl-divergence-base", base, "--log-file", log],
                    capture_output=True, text=True,
                )
                if p.returncode != 0:
                    res["llama.cpp"][key] = {"error": open(log).read().strip().splitlines()[-3:]}
                    ok = False
                    continue
                # llama.cpp pads the context (n_ctx_seq) to a multiple of 256 and switches on it
                n_ctx_seq = 256 * ((ctx + 255) // 256)
                for line in open(log):
                    if "n_ctx_seq" in line and "(" in line:
                        n_ctx_seq = int(line.split("n_ctx_seq (")[1].split(")")[0])
                q = subprocess.run(
                    [args.shrink, "eval", "-q", "--model", model, "--reference-logits", base, "--protocol",
                     "llama.cpp", "--json"],
                    capture_output=True, text=True,
                )
                if q.returncode != 0:
                    res["llama.cpp"][key] = {"error": q.stderr.strip().splitlines()[-3:]}
                    ok = False
                    continue
                r = json.loads(q.stdout)
                lc = "long" if n_ctx_seq > orig else "short"
                sh = "long" if ctx > orig else "short"
                res["llama.cpp"][key] = {
                    "llama.cpp n_ctx_seq": n_ctx_seq,
                    "llama.cpp factors": lc,
                    "shrink factors (sequence of ctx tokens)": sh,
                    "kld_mean": r["kld_mean"],
                    "kld_max": r["kld_max"],
                    "top1_agreement": r["top1_agreement"],
                    "ppl_shrink": r["perplexity"],
                    "ppl_llama.cpp": r["reference_perplexity"],
                }
                # the same factors must give the same logits; different ones must not
                if lc == sh:
                    # (top-1 is reported, not required: the random tiny model has near ties)
                    ok = ok and r["kld_mean"] < 1e-5 and r["kld_max"] < 1e-4
                else:
                    ok = ok and r["kld_mean"] > 1e-3
    res["ok"] = ok
    C.write_result(res, args.out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
