#!/usr/bin/env python3
"""Generates crates/shrink-model/src/iq_tables.rs from the installed gguf-py package.

Run from anywhere (rewrites the file; `cargo fmt` leaves it as written):

    /work/main/.venv-ref/bin/python tools/reference/gen_iq_tables.py

With `--check PATH/TO/ggml-common.h` it also compares every table with that header
(e.g. `git show HEAD:src/ggml-common.h` of github.com/ggml-org/ggml) and fails on a
difference.

The tables are ggml format data (ggml/src/ggml-common.h: iq2xxs_grid, iq2xs_grid,
iq2s_grid, iq3xxs_grid, iq3s_grid, iq1s_grid, ksigns_iq2xs, kvalues_mxfp4).
gguf-py (gguf/quants.py, MIT licence, part of llama.cpp) holds the same tables
with each grid byte packed into 2 or 3 bits; this script unpacks them with
gguf-py's own `init_grid` and writes them back in ggml-common.h's layout (one
little-endian u64 per 8-value IQ2/IQ1 grid point, one u32 per 4-value IQ3 grid
point), so the Rust file can be compared with ggml-common.h line by line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
from pathlib import Path

import numpy as np
from gguf import quants

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "shrink-model" / "src" / "iq_tables.rs"


def grid_points(cls) -> np.ndarray:
    """The grid of `cls` as integers, shape (n_points, n_values)."""
    cls.init_grid()
    grid = np.asarray(cls.grid, dtype=np.float32).reshape(cls.grid_shape)
    as_int = grid.astype(np.int64)
    assert np.array_equal(as_int.astype(np.float32), grid), cls.__name__
    return as_int


def packed(points: np.ndarray) -> list[int]:
    """Each grid point as ggml stores it: value j in byte j (little-endian), int8 as two's complement."""
    out = []
    for p in points:
        word = 0
        for j, v in enumerate(p):
            assert -128 <= v <= 255
            word |= (int(v) & 0xFF) << (8 * j)
        out.append(word)
    return out


def rust_array(name: str, ty: str, doc: str, values: list[int], width: int, per_line: int) -> str:
    lines = [f"/// {line}".rstrip() for line in doc.strip().splitlines()]
    lines.append("#[rustfmt::skip]")
    lines.append(f"pub const {name}: [{ty}; {len(values)}] = [")
    for i in range(0, len(values), per_line):
        chunk = values[i : i + per_line]
        if width:
            lines.append("    " + " ".join(f"0x{v:0{width}x}," for v in chunk))
        else:
            lines.append("    " + " ".join(f"{v}," for v in chunk))
    lines.append("];")
    return "\n".join(lines) + "\n"


def header_table(text: str, name: str) -> list[int]:
    """The values of `GGML_TABLE_BEGIN(type, name, size) ... GGML_TABLE_END()` in ggml-common.h."""
    m = re.search(r"GGML_TABLE_BEGIN\(\s*\w+\s*,\s*" + name + r"\s*,[^)]*\)(.*?)GGML_TABLE_END\(\)", text, re.S)
    assert m, f"{name} not found in the header"
    return [int(v, 0) for v in re.findall(r"-?(?:0x[0-9a-fA-F]+|\d+)", re.sub(r"//[^\n]*", "", m.group(1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, help="ggml-common.h to compare the tables with")
    args = ap.parse_args()
    tables: dict[str, list[int]] = {}
    version = importlib.metadata.version("gguf")
    parts = [
        "//! Lattice tables of the ggml i-quants and MXFP4 (format data, generated; do not edit).\n"
        "//!\n"
        "//! Source: ggml/src/ggml-common.h (llama.cpp, MIT licence), read through the gguf-py\n"
        f"//! package {version} (gguf/quants.py, MIT licence), which holds the same tables.\n"
        "//! Regenerate with:\n"
        "//!\n"
        "//! ```text\n"
        "//! /work/main/.venv-ref/bin/python tools/reference/gen_iq_tables.py [--check ggml-common.h]\n"
        "//! ```\n"
        "//!\n"
        "//! The layout is ggml-common.h's: an 8-value grid point is one `u64` whose byte `j`\n"
        "//! is value `j` (`int8_t` for IQ1), a 4-value point one `u32` with byte `j` = value `j`.\n",
        "#![allow(clippy::unreadable_literal)]\n",
    ]
    grids = [
        ("IQ2XXS_GRID", quants.IQ2_XXS, "u64", 16, "`iq2xxs_grid`: 256 points of 8 values in {8, 25, 43} (IQ2_XXS)."),
        ("IQ2XS_GRID", quants.IQ2_XS, "u64", 16, "`iq2xs_grid`: 512 points of 8 values in {8, 25, 43} (IQ2_XS)."),
        ("IQ2S_GRID", quants.IQ2_S, "u64", 16, "`iq2s_grid`: 1024 points of 8 values in {8, 25, 43} (IQ2_S)."),
        ("IQ3XXS_GRID", quants.IQ3_XXS, "u32", 8, "`iq3xxs_grid`: 256 points of 4 values in {4, 12, .., 52, 62} (IQ3_XXS)."),
        ("IQ3S_GRID", quants.IQ3_S, "u32", 8, "`iq3s_grid`: 512 points of 4 values in {1, 3, .., 15} (IQ3_S)."),
        ("IQ1S_GRID", quants.IQ1_S, "u64", 16, "`iq1s_grid`: 2048 points of 8 values in {-1, 0, 1} as `int8_t` (IQ1_S, IQ1_M)."),
    ]
    for name, cls, ty, width, doc in grids:
        points = grid_points(cls)
        assert points.shape[0] == cls.grid_shape[0] and points.shape[1] * 8 == (64 if ty == "u64" else 32)
        tables[name] = packed(points)
        parts.append(rust_array(name, ty, doc, tables[name], width, 4 if ty == "u64" else 8))
    ksigns = list(quants.IQ2_XXS.ksigns)
    assert len(ksigns) == 128
    # ggml: ksigns_iq2xs[i] = i | (parity(i) << 7), i.e. 8 sign bits with an even count of ones.
    assert all(s & 0x7F == i and bin(s).count("1") % 2 == 0 for i, s in enumerate(ksigns))
    parts.append(
        rust_array(
            "KSIGNS_IQ2XS",
            "u8",
            "`ksigns_iq2xs`: 7 stored sign bits -> 8 sign bits (bit 7 makes the count of ones even).",
            ksigns,
            2,
            16,
        )
    )
    tables["KSIGNS_IQ2XS"] = ksigns
    kvalues = list(quants.MXFP4.kvalues)
    tables["KVALUES_MXFP4"] = kvalues
    assert len(kvalues) == 16
    parts.append(
        rust_array(
            "KVALUES_MXFP4",
            "i8",
            "`kvalues_mxfp4`: the 16 FP4 (E2M1) values, doubled (the scale is halved to match).",
            kvalues,
            0,
            16,
        )
    )
    OUT.write_text("\n".join(parts))
    print(f"wrote {OUT}")
    if args.check:
        text = args.check.read_text()
        for name, values in tables.items():
            # kvalues_mxfp4 is a #define of kvalues_fp4 in newer headers
            c_name = name.lower()
            if name == "KVALUES_MXFP4" and "kvalues_mxfp4, 16)" not in text:
                c_name = "kvalues_fp4"
            want = header_table(text, c_name)
            if name == "KVALUES_MXFP4":
                values = [v & 0xFF for v in values]
                want = [v & 0xFF for v in want]
            assert want == values, f"{name} differs from {c_name} in {args.check}"
            print(f"{name}: {len(values)} values = {c_name} in {args.check}")


if __name__ == "__main__":
    main()
