"""Reference greedy generations of the default GGUF model, by transformers' `generate`.

Loads models/SmolLM2-135M-Instruct.Q4_1.gguf with transformers' GGUF loader (float32, every
tensor dequantized) and tokenizer, and for each prompt below runs
`model.generate(input_ids, do_sample=False, max_new_tokens=N)` (greedy, KV cache, the model's own
EOS as the stop token). Plain prompts are tokenized with `tokenizer(text)`; the chat prompt is
`tokenizer.apply_chat_template([{"role": "user", ...}], add_generation_prompt=True)`. Writes
tests/fixtures/reference/generate_smollm2.json: per prompt its kind, text, the rendered chat text,
the prompt ids and the generated ids (EOS included when it stopped there).

crates/shrink-cli/tests/generate.rs runs `shrink generate --json` on the same prompts and asks for
the same ids.

Run:
    .venv-ref/bin/python tools/reference/generate_ref.py [--max-new-tokens 96]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

PROMPTS = [
    ("prompt", "The history of the Roman Empire"),
    ("prompt", "Photosynthesis is the process by which"),
    ("chat", "Write a short poem about the sea."),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=C.DEFAULT_GGUF)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", default=os.path.join(C.FIXTURES_REF, "generate_smollm2.json"))
    a = ap.parse_args()
    torch = C.setup_torch()
    import transformers

    tok = C.load_gguf_tokenizer(a.gguf)
    model = C.load_gguf_model(a.gguf)
    rows = []
    for kind, text in PROMPTS:
        if kind == "chat":
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
        else:
            rendered = None
            ids = tok(text)["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=a.max_new_tokens,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            )
        new = out[0, len(ids):].tolist()
        C.log(kind, repr(text), len(new), "new tokens:", repr(tok.decode(new)))
        rows.append({"kind": kind, "text": text, "rendered": rendered, "prompt_ids": ids, "ids": new,
                     "eos_token_id": tok.eos_token_id})
    C.write_result({
        "model": C.rel(a.gguf), "gguf": C.file_digest(a.gguf), "max_new_tokens": a.max_new_tokens,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "method": "model.generate(do_sample=False), float32, transformers' GGUF loader",
        "prompts": rows,
    }, a.out)


if __name__ == "__main__":
    main()
