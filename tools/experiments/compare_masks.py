"""Where two pruned copies of the same model differ: per decoder layer and linear, the fraction of
positions whose kept/pruned state agrees and the relative difference of the weights ||A-B||/||B||.

    .venv-ref/bin/python tools/experiments/compare_masks.py A/model.safetensors B/model.safetensors

Used to tell a systematic difference between two SparseGPT runs (masks differ from layer 0) from
numerical drift (layer 0 identical, disagreement growing with depth). Needs numpy + safetensors.
"""
import re
import sys

import numpy as np
from safetensors.numpy import load_file

KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
    layers = {}
    for n in a:
        m = re.search(r"layers\.(\d+)\..*\.(\w+_proj)\.weight$", n)
        if m and n in b:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = n
    print("layer | " + " | ".join(f"{k} agree / rel" for k in KINDS))
    tot_agree = tot_n = 0
    for l in sorted(layers):
        cells = []
        for k in KINDS:
            n = layers[l].get(k)
            if n is None:
                cells.append("-")
                continue
            wa, wb = a[n].astype(np.float64), b[n].astype(np.float64)
            agree = int(((wa != 0) == (wb != 0)).sum())
            tot_agree += agree
            tot_n += wa.size
            rel = np.linalg.norm(wa - wb) / max(np.linalg.norm(wb), 1e-30)
            cells.append(f"{100 * agree / wa.size:6.2f}% {rel:.3f}")
        print(f"{l:5d} | " + " | ".join(cells))
    print(f"all   | {100 * tot_agree / max(tot_n, 1):.2f}% of positions agree")


if __name__ == "__main__":
    main()
