//! shrink's ggml quantizers against llama.cpp's, byte for byte, on rows of a real weight:
//! tests/fixtures/gguf_quant/llama_quantize_rows.safetensors holds the f32 rows, an importance
//! matrix and the bytes `llama-quantize --pure` wrote for each type, without and with that matrix
//! (made by tools/reference/compare_llama_quantize.sh and gguf_quant_fixture.py).
use shrink_formats::gguf_quant::quantize;
use shrink_model::gguf::GgmlType;
use std::path::PathBuf;

#[test]
fn quantizers_match_llama_quantize_byte_for_byte() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gguf_quant/llama_quantize_rows.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(n).unwrap();
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (shape, x) = f32s("input");
    let (_, im) = f32s("imatrix");
    let cols = shape[1];
    let mut checked = 0;
    for name in [
        "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
        "IQ4_XS", "MXFP4",
    ] {
        let ty = GgmlType::from_name(name).unwrap();
        for mode in ["plain", "imatrix"] {
            let want = st.tensor(&format!("{name}.{mode}")).unwrap();
            let w = (mode == "imatrix").then_some(&im[..]);
            let got = quantize(ty, &x, cols, w).unwrap();
            assert_eq!(got.len(), want.data().len(), "{name} {mode}");
            let first_bad = got.iter().zip(want.data()).position(|(a, b)| a != b);
            assert!(
                first_bad.is_none(),
                "{name} {mode}: first differing byte {first_bad:?} of {}",
                got.len()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 26);
    // The importance matrix changes the result for every type but Q8_0 (llama.cpp ignores it there).
    for name in ["Q4_0", "Q2_K", "Q3_K", "Q4_K", "Q6_K", "IQ4_NL", "IQ4_XS"] {
        let a = st.tensor(&format!("{name}.plain")).unwrap();
        let b = st.tensor(&format!("{name}.imatrix")).unwrap();
        assert_ne!(a.data(), b.data(), "{name}");
    }
}

/// The lattice i-quants (IQ3, IQ2, IQ1) and the ternary TQ1_0/TQ2_0 against llama.cpp's
/// `ggml_quantize_chunk`:
/// tests/fixtures/gguf_quant/ggml_quantize_iq_rows.safetensors holds its bytes for the rows above
/// (`<TYPE>.plain`, `<TYPE>.imatrix`) and for synthetic rows with edge cases (`edge`,
/// `edge_imatrix`; `<TYPE>.edge.plain`, `<TYPE>.edge.imatrix`), made by
/// tools/reference/ggml_quantize_rows.c and ggml_quantize_fixture.py. IQ2_XXS, IQ2_XS and IQ1_S
/// need an importance matrix in llama.cpp, and have no plain bytes; TQ1_0 and TQ2_0 ignore it.
#[test]
fn lattice_iquants_match_ggml_quantize_chunk_byte_for_byte() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf_quant");
    let rows = std::fs::read(dir.join("llama_quantize_rows.safetensors")).unwrap();
    let rows = safetensors::SafeTensors::deserialize(&rows).unwrap();
    let bytes = std::fs::read(dir.join("ggml_quantize_iq_rows.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |st: &safetensors::SafeTensors, n: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(n).unwrap();
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (shape, x) = f32s(&rows, "input");
    let (_, im) = f32s(&rows, "imatrix");
    let (eshape, ex) = f32s(&st, "edge");
    let (_, eim) = f32s(&st, "edge_imatrix");
    let mut checked = 0;
    let mut nbytes = 0;
    // (type, the largest relative RMS error of its round trip: 3 bits, 2 bits, 1.5-1.75 bits,
    // ternary at the block's amax)
    for (name, hi) in [
        ("IQ3_XXS", 0.3),
        ("IQ3_S", 0.3),
        ("IQ2_XXS", 0.5),
        ("IQ2_XS", 0.5),
        ("IQ2_S", 0.5),
        ("IQ1_S", 0.9),
        ("IQ1_M", 0.9),
        ("TQ1_0", 1.0),
        ("TQ2_0", 1.0),
    ] {
        let ty = GgmlType::from_name(name).unwrap();
        for (set, x, im, cols) in [("", &x, &im, shape[1]), (".edge", &ex, &eim, eshape[1])] {
            for mode in ["plain", "imatrix"] {
                let key = format!("{name}{set}.{mode}");
                let w = (mode == "imatrix").then_some(&im[..]);
                let Ok(want) = st.tensor(&key) else {
                    // llama.cpp refuses it; so does shrink
                    assert!(w.is_none() && quantize(ty, x, cols, w).is_err(), "{key}");
                    continue;
                };
                let got = quantize(ty, x, cols, w).unwrap();
                assert_eq!(got.len(), want.data().len(), "{key}");
                let first_bad = got.iter().zip(want.data()).position(|(a, b)| a != b);
                assert!(
                    first_bad.is_none(),
                    "{key}: first differing byte {first_bad:?} of {} (block {:?})",
                    got.len(),
                    first_bad.map(|i| i / ty.type_size())
                );
                checked += 1;
                nbytes += got.len();
                if set.is_empty() {
                    // and shrink's dequantizer gets the rows back within the type's error
                    let mut y = vec![0f32; x.len()];
                    shrink_model::quants::dequantize(ty, &got, &mut y).unwrap();
                    let e: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
                    let rel = (e / x.iter().map(|a| a * a).sum::<f32>()).sqrt();
                    assert!(rel > 0.02 && rel < hi, "{key}: relative RMS error {rel}");
                }
            }
        }
    }
    assert_eq!(checked, 30);
    // 48 blocks of input, 12 of edge rows; IQ2_XXS, IQ2_XS and IQ1_S with an imatrix only
    let blocks = |ty: &str| GgmlType::from_name(ty).unwrap().type_size() * (48 + 12);
    assert_eq!(
        nbytes,
        2 * ["IQ3_XXS", "IQ3_S", "IQ2_S", "IQ1_M", "TQ1_0", "TQ2_0"]
            .map(blocks)
            .iter()
            .sum::<usize>()
            + blocks("IQ2_XXS")
            + blocks("IQ2_XS")
            + blocks("IQ1_S")
    );
}
