#!/usr/bin/env python3
"""Reference fixtures for the GGUF dequantizers (crates/shrink-model/src/quants.rs).

Run from anywhere:

    /work/main/.venv-ref/bin/python tools/reference/gguf_blocks.py

Writes tests/fixtures/gguf_blocks/:

* ``<type>.raw``   seeded random blocks of ggml type <type> (raw bytes as stored in GGUF)
* ``<type>.f32``   little-endian f32 values ``gguf.quants.dequantize(raw, type)`` gives
* ``manifest.json`` the list of cases (type, ggml id, element count, file names)
* ``smollm2_q4_1.json`` (only when models/SmolLM2-135M-Instruct.Q4_1.gguf exists):
  tensor count, llama.block_count, and for token_embd.weight (Q8_0) and
  blk.0.attn_q.weight (Q4_1): dims, sum of all values, the sum of all f32 bit
  patterns (an exact checksum) and the first 16 values of a few rows.

The f16 scale fields of the quantized blocks are replaced by finite values
(mostly random in +-0.1, plus 0, -0, f16 subnormals and a large value) so every
expected value is finite; all other bytes are uniformly random (grid indices,
signs and the i-quants' 4-bit sub-scales included). IQ1_M's f16 scale, spread
over four nibbles, is set the same way; MXFP4's e8m0 exponent byte is drawn from
0..=252 (0, 1: subnormal scales; 253 and up would overflow 12 * scale). F16 and
BF16 cases are fully random (NaN/inf included).
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "gguf_blocks"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 20240611

# Byte offsets of the f16 scale fields inside one block (see quants.rs).
SCALE_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ2_XXS: [0],
    T.IQ2_XS: [0],
    T.IQ2_S: [0],
    T.IQ3_XXS: [0],
    T.IQ3_S: [0],
    T.IQ1_S: [0],
    T.IQ1_M: [],  # its f16 scale is spread over 4 nibbles, see IQ1_M_SCALE_BYTES
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
    T.TQ1_0: [52],
    T.TQ2_0: [64],
    T.MXFP4: [],  # an e8m0 exponent byte, see E8M0_FIELD
}
# IQ1_M: the f16 scale's 4 nibbles (low first) are the high nibbles of these bytes
# (the top 4 bits of each of the 4 u16 scale words at 48..56).
IQ1_M_SCALE_BYTES = [49, 51, 53, 55]
# MXFP4: byte 0 is an e8m0 exponent, the scale is 2^(e - 128) (the values are doubled);
# e <= 252 keeps 12 * 2^(e - 128) finite.
E8M0_FIELD = 0
E8M0_MAX = 252
SPECIAL_E8M0 = [0, 1, 2, 127, 128, E8M0_MAX]
# Blocks per case: enough to cover every bit pattern several times, small on disk.
N_BLOCKS_32 = 16
N_BLOCKS_256 = 6
# Blocks per case for the 256-weight types added later (i-quants, ternary): more random
# scales, and the grid types reach more grid points (each index looks up 4 or 8 values).
N_BLOCKS_256_NEW = 16
N_FLOAT_ELEMENTS = 512

# f16 bit patterns used for the scales of the first blocks of each case.
SPECIAL_SCALES = [
    0x0000,  # +0
    0x8000,  # -0
    0x0001,  # smallest subnormal
    0x83FF,  # largest negative subnormal
    0x7BFF,  # 65504, largest finite
]


def f16_scales(rng: np.random.Generator, n_blocks: int, off: int) -> np.ndarray:
    """f16 bit patterns for one scale field of `n_blocks` blocks: random in +-0.1 plus the specials."""
    vals = rng.uniform(-0.1, 0.1, size=n_blocks).astype(np.float16).view(np.uint16)
    for i, bits in enumerate(SPECIAL_SCALES):
        # rotate the special values over fields so d and dmin differ
        vals[(i + off) % n_blocks] = bits
    return vals


def block_case(qtype: T, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype in NEW_TYPES and block_size == 256:
        n_blocks = N_BLOCKS_256_NEW
    else:
        n_blocks = N_BLOCKS_32 if block_size == 32 else N_BLOCKS_256
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        vals = f16_scales(rng, n_blocks, off)
        raw[:, off : off + 2] = vals.astype("<u2").view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.IQ1_M:
        vals = f16_scales(rng, n_blocks, 0)
        for k, b in enumerate(IQ1_M_SCALE_BYTES):
            nib = ((vals >> (4 * k)) & 0xF).astype(np.uint8)
            raw[:, b] = (raw[:, b] & 0x0F) | (nib << 4)
    if qtype == T.MXFP4:
        e = rng.integers(0, E8M0_MAX + 1, size=n_blocks, dtype=np.uint8)
        e[: len(SPECIAL_E8M0)] = SPECIAL_E8M0
        raw[:, E8M0_FIELD] = e
    raw = raw.reshape(-1)
    expected = dequantize(raw, qtype).astype(np.float32).reshape(-1)
    assert expected.size == n_blocks * block_size
    assert np.all(np.isfinite(expected)), qtype.name
    return raw, expected


def float_case(qtype: T, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=N_FLOAT_ELEMENTS * type_size, dtype=np.uint8)
    expected = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(-1)
    assert expected.size == N_FLOAT_ELEMENTS
    return raw, expected


# Appended after the original twelve so their fixtures stay byte-identical.
NEW_TYPES = [T.IQ4_NL, T.IQ4_XS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0, T.MXFP4]


def write_blocks() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.F16, T.BF16] + NEW_TYPES:
        rng = np.random.default_rng([SEED, int(qtype)])
        raw, expected = block_case(qtype, rng) if qtype in SCALE_FIELDS else float_case(qtype, rng)
        stem = qtype.name.lower()
        (OUT / f"{stem}.raw").write_bytes(raw.tobytes())
        (OUT / f"{stem}.f32").write_bytes(expected.astype("<f4").tobytes())
        cases.append(
            {
                "type": qtype.name,
                "type_id": int(qtype),
                "n_elements": int(expected.size),
                "raw": f"{stem}.raw",
                "expected": f"{stem}.f32",
            }
        )
        print(f"{qtype.name:7} {raw.size:6} bytes -> {expected.size:5} values")
    manifest = {
        "generator": "tools/reference/gguf_blocks.py",
        "gguf_version": importlib.metadata.version("gguf"),
        "numpy_version": np.__version__,
        "seed": SEED,
        "cases": cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def write_model_fixture() -> None:
    if not MODEL.exists():
        print(f"note: {MODEL} is absent, skipping smollm2_q4_1.json", file=sys.stderr)
        return
    reader = gguf.GGUFReader(MODEL)
    block_count = int(reader.fields["llama.block_count"].contents())
    tensors = {}
    for t in reader.tensors:
        if t.name not in ("token_embd.weight", "blk.0.attn_q.weight"):
            continue
        values = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        dims = [int(d) for d in t.shape]  # ggml order
        values = values.reshape(-1, dims[0])
        n_rows = values.shape[0]
        rows = sorted({0, 1, min(1000, n_rows - 1), n_rows - 1})
        flat = values.reshape(-1)
        tensors[t.name] = {
            "type": t.tensor_type.name,
            "dims": dims,
            "n_elements": int(flat.size),
            "sum": float(flat.astype(np.float64).sum()),
            "bits_sum": int(flat.view(np.uint32).astype(np.uint64).sum()),
            "rows": {
                str(r): {
                    "values": [float(v) for v in values[r, :16]],
                    "bits": [int(b) for b in values[r, :16].view(np.uint32)],
                }
                for r in rows
            },
        }
        print(f"{t.name}: {t.tensor_type.name} dims {dims} sum {tensors[t.name]['sum']}")
    fixture = {
        "generator": "tools/reference/gguf_blocks.py",
        "gguf_version": importlib.metadata.version("gguf"),
        "model": MODEL.name,
        "n_tensors": len(reader.tensors),
        "block_count": block_count,
        "tensors": tensors,
    }
    (OUT / "smollm2_q4_1.json").write_text(json.dumps(fixture, indent=1) + "\n")


def main() -> None:
    write_blocks()
    write_model_fixture()


if __name__ == "__main__":
    main()
