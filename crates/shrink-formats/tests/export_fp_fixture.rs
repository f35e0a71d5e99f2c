//! compressed-tensors' own decompressors on shrink's float / W8A8 exports of the default model
//! (tools/reference/check_export_fp.py, run by hand; its output is the committed fixture): every
//! scheme's config equals llm-compressor's preset and every linear decompresses to shrink's
//! dequantized weight bit for bit.
use std::path::Path;

#[test]
fn compressed_tensors_decompresses_every_float_scheme_bit_exactly() {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/export_fp.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("fixture present")).unwrap();
    let schemes = v["schemes"].as_object().expect("schemes");
    for name in ["NVFP4A16", "MXFP4A16", "FP8_DYNAMIC", "FP8_BLOCK", "W8A8"] {
        let r = &schemes[name];
        let n = r["linears"].as_u64().unwrap();
        assert_eq!(n, 210, "{name}: 30 layers x 7 linears");
        assert_eq!(r["decompress_bit_exact"].as_u64(), Some(n), "{name}");
        assert_eq!(r["f32_bit_exact"].as_u64(), Some(n), "{name}");
        for k in [
            "config_weights_equal",
            "config_input_activations_equal",
            "config_format_equal",
            "pass",
        ] {
            assert_eq!(r[k], true, "{name}: {k}");
        }
        assert_eq!(r["transformers_load"], "ok", "{name}");
    }
    assert_eq!(schemes["NVFP4A16"]["format"], "nvfp4-pack-quantized");
    assert_eq!(schemes["MXFP4A16"]["format"], "mxfp4-pack-quantized");
    assert_eq!(schemes["FP8_DYNAMIC"]["format"], "float-quantized");
    assert_eq!(schemes["W8A8"]["format"], "int-quantized");
}
