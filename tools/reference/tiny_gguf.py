"""GGUF copies of the tiny models in tests/fixtures/tiny/, made by llama.cpp's own converter.

For each case below this runs llama.cpp's `convert_hf_to_gguf.py --outtype f32` on
tests/fixtures/tiny/<case>/ (as written by tiny_models.py) into

    tests/fixtures/tiny/<case>/model.f32.gguf
    tests/fixtures/tiny/<case>/model.f32.gguf.txt   what gguf-py's GGUFReader sees in it: architecture,
                                                    every metadata key with its type and value (long
                                                    arrays shortened) and every tensor's name, shape
                                                    (GGUF order: ne0 first) and type

so that shrink's GGUF loader can be tested per family against the layout the real converter writes
(tensor names, q/k permutation for llama, Gemma's norm +1, Phi-3's fused qkv, 3-D `ffn_*_exps` expert
tensors, the metadata keys) and, through tiny_models.py's reference.safetensors, against
transformers' logits.

The converter is the one vendored in the llama-cpp-python source distribution on PyPI
(vendor/llama.cpp/convert_hf_to_gguf.py with its conversion/ package), imported together with the
gguf-py next to it (not the gguf package of .venv-ref), run in a child process per case. Fetch it with

    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python -d out/export/llamacpp
    tar -xzf out/export/llamacpp/llama_cpp_python-*.tar.gz -C out/export/llamacpp

(the same place tools/reference/build_llamacpp.sh uses; `--no-binary :all:` would also build cmake
and ninja from source) or pass --llamacpp DIR (the vendor/llama.cpp directory or the unpacked sdist).

Vocabulary. The tiny directories have no tokenizer and the converter needs one. Nothing is written
to disk for it: in the child process only the converter's *vocabulary source* is replaced by a
synthetic vocabulary of exactly vocab_size (128) tokens; the converter's own set_vocab code still
writes it (tokenizer.ggml.model / pre / tokens / scores / token_type / merges and the special ids,
which gguf.SpecialVocab reads from config.json as usual):

  * BPE ("gpt2"; llama (Llama-3 style), qwen2, qwen3, qwen3_moe, qwen3_moe_sparse): TextModel.get_vocab_base returns
    the synthetic tokens (config's bos/eos ids as CONTROL "<|bos|>"/"<|eos|>", the GPT-2 byte-level
    characters of the 95 printable ASCII bytes, then 31 merged tokens) and a `pre` of "llama-bpe"
    (llama) or "qwen2" (the Qwen family); gguf.SpecialVocab gets the 31 matching merges (it would
    read merges.txt / tokenizer.json, which do not exist).
  * SentencePiece ("llama"; gemma3, gemma3_softcap, phi3, phi3_partial, phi3_longrope, mixtral):
    TextModel._create_vocab_sentencepiece returns synthetic pieces, scores and types (Gemma: 0 <pad>,
    1 <eos>, 2 <bos>, 3 <unk> as in Gemma's tokenizer; Llama-style: 0 <unk>, 1 <s>, 2 </s>; then "▁",
    letters, digits, ".", ",", "▁a".., scores -1, -2, ...). Gemma3Model.set_vocab and its token_embd trimming
    test for tokenizer.model on disk, so that one Path.is_file answer is faked for Gemma;
    Phi3MiniModel.set_vocab reads tokenizer.model with sentencepiece directly, so for Phi-3 set_vocab
    is replaced by the converter's own generic TextModel._set_vocab_sentencepiece (the same keys
    Phi3MiniModel writes: model "llama", pre "default", tokens, scores, token_type, special ids).

Everything else (tensor names and layout, permutations, norm shifts, expert stacking, metadata) is
the converter's, untouched. A case the converter refuses is recorded and skipped: the printed JSON
and (for a full run) tests/fixtures/tiny/gguf_manifest.json hold, per case, the llama-cpp-python
version, the architecture, size, layer-0 tensor names and arch keys, or the refusal with the tail
of the converter's log. The .txt listing ends with [layout checks]: how each GGUF tensor relates to
the HF tensor it came from (identical, HF + 1, llama.cpp permute, expert stack), checked on the data.

Run:
    .venv-ref/bin/python tools/reference/tiny_gguf.py                 # all cases
    .venv-ref/bin/python tools/reference/tiny_gguf.py --only qwen3 gemma3 --llamacpp /tmp/llama_cpp_python-0.3.36
"""

import argparse
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

CASES = [
    "llama",
    "qwen2",
    "qwen3",
    "gemma3",
    "gemma3_softcap",
    "phi3",
    "phi3_partial",
    "qwen3_moe",
    "qwen3_moe_sparse",
    "mixtral",
    "olmoe",
    "phi3_longrope",
]
BPE_PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "qwen3_moe": "qwen2", "qwen3_moe_sparse": "qwen2",
           "olmoe": "olmo"}
SPM_CASES = ("gemma3", "gemma3_softcap", "phi3", "phi3_partial", "mixtral", "phi3_longrope")
MAX_GGUF_BYTES = 300_000


def find_llamacpp(arg):
    cands = [arg] if arg else sorted(glob.glob(C.repo_path("out/export/llamacpp/llama_cpp_python-*/")))
    for c in cands:
        if not c:
            continue
        for d in (c, os.path.join(c, "vendor", "llama.cpp")):
            if os.path.isfile(os.path.join(d, "convert_hf_to_gguf.py")):
                return os.path.abspath(d)
    raise SystemExit("llama.cpp converter not found: see the module docstring (--llamacpp DIR)")


def llamacpp_python_version(conv_dir):
    pkg = os.path.join(conv_dir, "..", "..", "PKG-INFO")
    if os.path.isfile(pkg):
        for line in open(pkg, encoding="utf-8"):
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


# ---- synthetic vocabularies -------------------------------------------------------------------


def _gpt2_byte_char(b):
    """The printable character GPT-2's byte-level BPE uses for byte b (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    if b in keep:
        return chr(b)
    n = sum(1 for x in range(b) if x not in keep)
    return chr(256 + n)


def synthetic_bpe(vocab_size, bos, eos):
    special = {i: t for i, t in ((bos, "<|bos|>"), (eos, "<|eos|>")) if i is not None}
    base = [_gpt2_byte_char(b) for b in range(0x21, 0x7F)] + [_gpt2_byte_char(0x20)]  # 94 + "Ġ"
    sp = _gpt2_byte_char(0x20)
    merges = [(sp, c) for c in "abcdefghijklmnopqrstuvwxyz"] + [("t", "h"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n")]
    n_plain = vocab_size - len(special)
    merges = merges[: max(0, n_plain - len(base))]
    plain = (base + [a + b for a, b in merges])[:n_plain]
    tokens, types, it = [], [], iter(plain)
    for i in range(vocab_size):
        if i in special:
            tokens.append(special[i])
            types.append(3)  # gguf.TokenType.CONTROL
        else:
            tokens.append(next(it))
            types.append(1)  # NORMAL
    return tokens, types, [f"{a} {b}" for a, b in merges]


def synthetic_spm(vocab_size, gemma):
    if gemma:
        special = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2)]
    else:
        special = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    pieces = ["\u2581"] + list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,")
    pieces += ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]
    tokens, scores, types = [], [], []
    for t, ty in special:
        tokens.append(t.encode())
        scores.append(0.0)
        types.append(ty)  # SentencePieceTokenTypes: NORMAL 1, UNKNOWN 2, CONTROL 3
    for i, p in enumerate(pieces[: vocab_size - len(special)]):
        tokens.append(p.encode())
        scores.append(-float(i + 1))
        types.append(1)
    assert len(tokens) == vocab_size, len(tokens)
    return tokens, scores, types


# ---- child: one conversion ----------------------------------------------------------------------


def convert_child(case, model_dir, out_file, conv_dir):
    sys.path.insert(0, conv_dir)
    sys.path.insert(1, os.path.join(conv_dir, "gguf-py"))
    import pathlib

    import convert_hf_to_gguf as CV  # noqa: F401  (also puts conversion/ on the import path)
    import gguf
    import conversion
    from conversion.base import TextModel

    assert os.path.dirname(os.path.abspath(gguf.__file__)).startswith(os.path.join(conv_dir, "gguf-py")), gguf.__file__
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    arch = cfg["architectures"][0]
    vocab_size = cfg["vocab_size"]
    cls = conversion.get_model_class(arch)

    if case in SPM_CASES:
        gemma = case.startswith("gemma")
        spm = synthetic_spm(vocab_size, gemma)
        TextModel._create_vocab_sentencepiece = lambda self: (list(spm[0]), list(spm[1]), list(spm[2]))
        if gemma:
            fake = pathlib.Path(model_dir).resolve() / "tokenizer.model"
            real_is_file = pathlib.Path.is_file
            pathlib.Path.is_file = lambda p: True if p.resolve() == fake else real_is_file(p)
        if cls.__name__ == "Phi3MiniModel":
            cls.set_vocab = lambda self: self._set_vocab_sentencepiece()
    else:
        tokens, types, merges = synthetic_bpe(vocab_size, cfg.get("bos_token_id"), cfg.get("eos_token_id"))
        TextModel.get_vocab_base = lambda self: (list(tokens), list(types), BPE_PRE[case])
        real_init = gguf.SpecialVocab.__init__

        def init(self, path, load_merges=False, *a, **kw):
            real_init(self, path, load_merges, *a, **kw)
            if load_merges and not self.merges:
                self.merges = list(merges)

        gguf.SpecialVocab.__init__ = init

    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", out_file]
    CV.main()


# ---- listing --------------------------------------------------------------------------------------


def describe(path, conv_dir):
    """Text listing of a GGUF file as gguf-py's GGUFReader reads it."""
    sys.path.insert(0, os.path.join(conv_dir, "gguf-py"))
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(path)
    lines = [f"# {os.path.basename(path)}: read by gguf-py GGUFReader (gguf-py of the converter)"]
    arch = None
    lines.append(f"# {len(r.fields)} metadata fields, {len(r.tensors)} tensors")
    lines.append("[metadata]")
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        t = f.types[0] if f.types else None
        if t == GGUFValueType.ARRAY:
            sub = f.types[1] if len(f.types) > 1 else None
            n = len(f.data)
            if sub == GGUFValueType.STRING:
                vals = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data[:8]]
            else:
                vals = [f.parts[i].tolist()[0] for i in f.data[:16]]
            more = f" ... ({n} items)" if n > len(vals) else ""
            lines.append(f"{name} = ARRAY[{sub.name if sub else '?'}; {n}] {json.dumps(vals, ensure_ascii=False)}{more}")
        elif t == GGUFValueType.STRING:
            v = bytes(f.parts[-1]).decode("utf-8", "replace")
            if name == "general.architecture":
                arch = v
            lines.append(f"{name} = STRING {json.dumps(v, ensure_ascii=False)}")
        else:
            v = f.parts[-1].tolist()[0]
            if isinstance(v, float):
                v = float(np.float32(v))
            lines.append(f"{name} = {t.name if t is not None else '?'} {v!r}")
    lines.append("[tensors] name  shape(ne0,ne1,..)  type  n_elements")
    for t in r.tensors:
        lines.append(f"{t.name}  {list(int(x) for x in t.shape)}  {t.tensor_type.name}  {int(t.n_elements)}")
    return arch, "\n".join(lines) + "\n", r


HF_TO_GGUF = [  # (HF suffix after model.layers.N., GGUF suffix after blk.N.)
    ("input_layernorm.weight", "attn_norm.weight"),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate_up_proj.weight", "ffn_up.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
]
EXPERTS = [("gate_proj", "w1", "ffn_gate_exps.weight"), ("up_proj", "w3", "ffn_up_exps.weight"), ("down_proj", "w2", "ffn_down_exps.weight")]


def layout_checks(model_dir, reader):
    """How each GGUF tensor relates to the HF tensor(s) it came from: checked, not assumed."""
    import numpy as np
    from safetensors.numpy import load_file

    hf = {}
    for f in sorted(os.listdir(model_dir)):
        if f.endswith(".safetensors") and f != "reference.safetensors":
            hf.update({k: v.astype(np.float32) for k, v in load_file(os.path.join(model_dir, f)).items()})
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    g = {t.name: np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)]) for t in reader.tensors}
    gemma_like = any(k.endswith("pre_feedforward_layernorm.weight") for k in hf)

    def permute(w, n_head):  # llama.cpp's LlamaModel.permute (interleaved -> GGML rope pairs)
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def relation(a, b, name):
        if a.shape != b.shape:
            return f"shape {list(a.shape)} vs HF {list(b.shape)}"
        if np.array_equal(a, b):
            return "identical"
        if np.array_equal(a, b + np.float32(1.0)):
            return "HF + 1"
        nh = cfg["num_attention_heads"]
        nkv = cfg.get("num_key_value_heads", nh)
        for n in {nh, nkv}:
            if a.ndim and a.shape[0] % (2 * n) == 0 and np.array_equal(a, permute(b, n)):
                return f"llama.cpp permute(HF, n_head={n})"
        return "DIFFERENT"

    lines, n_layers = [], cfg["num_hidden_layers"]
    pairs = [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight")]
    for i in range(n_layers):
        for hs, gs in HF_TO_GGUF + [("post_attention_layernorm.weight", "post_attention_norm.weight" if gemma_like else "ffn_norm.weight")]:
            pairs.append((f"model.layers.{i}.{hs}", f"blk.{i}.{gs}"))
    done = set()
    for hn, gn in pairs:
        if hn in hf and gn in g:
            lines.append(f"{gn} <- {hn}: {relation(g[gn], hf[hn], gn)}")
            done.add(gn)
    for i in range(n_layers):
        for a, b, gs in EXPERTS:
            gn = f"blk.{i}.{gs}"
            for pre in ("mlp.experts", "block_sparse_moe.experts"):
                pattern = f"model.layers.{i}.{pre}.{{e}}.{a if pre == 'mlp.experts' else b}.weight"
                names = [n for n in (pattern.format(e=e) for e in range(64)) if n in hf]
                if names and gn in g:
                    rel = relation(g[gn], np.stack([hf[n] for n in names]), gn)
                    lines.append(f"{gn} <- torch.stack over e = 0..{len(names) - 1} of {pattern}: {rel}")
                    done.add(gn)
    if "rope_freqs.weight" in g:
        lines.append(
            "rope_freqs.weight: no HF tensor; the converter's llama3 rope-scaling factors (llama.cpp divides "
            "each rotary frequency by its entry), there is no rope.scaling.type key"
        )
        done.add("rope_freqs.weight")
    if "rope_factors_long.weight" in g:
        for which in ("long", "short"):
            gn = f"rope_factors_{which}.weight"
            want = np.asarray(cfg["rope_scaling"][f"{which}_factor"], dtype=np.float32)
            same = "identical" if gn in g and np.array_equal(g[gn], want) else "DIFFERENT"
            lines.append(f"{gn} <- config.json rope_scaling.{which}_factor (as f32): {same}")
            done.add(gn)
    for gn in g:
        if gn not in done:
            lines.append(f"{gn}: no HF counterpart checked")
    if "lm_head.weight" not in hf and "output.weight" not in g:
        lines.append("output.weight absent: tied embeddings (token_embd.weight is the output matrix)")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=C.FIXTURES_TINY, help="the tiny fixtures directory (input and output)")
    ap.add_argument("--only", nargs="*", choices=CASES)
    ap.add_argument("--llamacpp", help="vendor/llama.cpp of the llama-cpp-python sdist (or the unpacked sdist)")
    ap.add_argument("--_child", nargs=2, metavar=("CASE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    conv_dir = find_llamacpp(args.llamacpp)
    root = C.repo_path(args.dir)
    if args._child:
        case, out = args._child
        convert_child(case, os.path.join(root, case), out, conv_dir)
        return
    version = llamacpp_python_version(conv_dir)
    results = []
    for case in args.only or CASES:
        d = os.path.join(root, case)
        out = os.path.join(d, "model.f32.gguf")
        res = {"case": case, "llama_cpp_python": version}
        if not os.path.isfile(os.path.join(d, "config.json")):
            res["skipped"] = "no tiny model directory (run tiny_models.py first)"
            results.append(res)
            continue
        for p in (out, out + ".txt"):
            if os.path.exists(p):
                os.remove(p)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("NO_LOCAL_GGUF", None)  # the converter then puts its own gguf-py first on sys.path
        p = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--dir", root, "--llamacpp", conv_dir, "--_child", case, out],
            capture_output=True,
            text=True,
            env=env,
        )
        if p.returncode != 0 or not os.path.isfile(out):
            err = [
                l.replace(conv_dir, "<llama.cpp>").replace(C.REPO_ROOT + os.sep, "")
                for l in (p.stderr or "").strip().splitlines()
                if l.strip()
            ]
            res["skipped"] = "converter refused: " + (err[-1] if err else f"exit {p.returncode}")
            res["converter_log_tail"] = err[-6:]
            if os.path.exists(out):
                os.remove(out)
            C.log(f"{case}: {res['skipped']}")
            results.append(res)
            continue
        arch, text, reader = describe(out, conv_dir)
        header = (
            f"# made by tools/reference/tiny_gguf.py: convert_hf_to_gguf.py --outtype f32 of llama-cpp-python "
            f"{version} (vendor/llama.cpp), synthetic vocabulary (see the script)\n"
        )
        checks = layout_checks(d, reader)
        with open(out + ".txt", "w", encoding="utf-8") as f:
            f.write(header + text + "[layout checks] GGUF tensor <- HF tensor: relation (checked on the data)\n")
            f.write("\n".join(checks) + "\n")
        size = os.path.getsize(out)
        res.update(
            {
                "architecture": arch,
                "bytes": size,
                "under_300KB": size < MAX_GGUF_BYTES,
                "tensors": len(reader.tensors),
                "layer0_tensors": [t.name for t in reader.tensors if t.name.startswith("blk.0.")],
                "arch_keys": [k for k in reader.fields if arch and k.startswith(arch + ".")],
                "layout_relations": sorted({c.split(": ", 1)[-1] for c in checks}),
            }
        )
        results.append(res)
    if not args.only:
        # What happened per case (converter version, size, or why the converter refused the case).
        with open(os.path.join(root, "gguf_manifest.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, ensure_ascii=False)
            f.write("\n")
    print(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
