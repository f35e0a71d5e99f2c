//! `shrink export` end to end on tiny models the tests write themselves: compressed-tensors and
//! GPTQ directories read back to exactly shrink's dequantized weights, GGUF files that quantize
//! like the reference quantizers, carry GPTQ codes over and use an importance matrix, `inspect` of
//! packed checkpoints, and clean failures that leave nothing behind.
use shrink_formats::gguf_quant;
use shrink_model::gguf::{GgmlType, GgufFile};
use shrink_model::source::{SafetensorsSource, TensorSource};
use shrink_model::{arch, ModelConfig, ModelSource};
use std::path::Path;

#[path = "common/mod.rs"]
mod cli_common;
use cli_common::{calib_text, fails_with, gguf_file, hf_dir, shrink, tiny};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = shrink(args);
    assert_eq!(code, 0, "{args:?} failed: {err}");
    out
}

/// `shrink export --model MODEL --format gguf --type TY EXTRA... --out OUT -q`, which must succeed.
fn export_gguf(model: &Path, ty: &str, out: &Path, extra: &[&str]) -> String {
    let (m, o) = (s(model), s(out));
    let mut a = vec!["export", "--model", &m, "--format", "gguf", "--type", ty];
    a.extend_from_slice(extra);
    a.extend(["--out", &o, "-q"]);
    ok(&a)
}

/// `shrink export --model MODEL --format gguf EXTRA... --out OUT --report R -q`, which must
/// succeed; the report it writes.
fn export_gguf_report(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let rep = out.with_extension("report.json");
    let (m, o, r) = (s(model), s(out), s(&rep));
    let mut a = vec!["export", "--model", &m, "--format", "gguf"];
    a.extend_from_slice(extra);
    a.extend(["--out", &o, "--report", &r, "-q"]);
    ok(&a);
    serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
}

/// No temporary file or directory left next to the outputs.
fn no_leftovers(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.ends_with(".part") || n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn compress(model: &Path, calib: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "compress".to_string(),
        "--model".into(),
        s(model),
        "--method".into(),
        "gptq".into(),
        "--calib".into(),
        s(calib),
        "--nsamples".into(),
        "8".into(),
        "--seqlen".into(),
        "32".into(),
        "--out".into(),
        s(out),
        "-q".into(),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    let a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    ok(&a);
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `scale * (code - zero)` of one linear from quantized.safetensors, the scale rounded by `round`.
fn from_codes(dir: &Path, base: &str, round: &dyn Fn(f32) -> f32) -> Vec<f32> {
    let q = SafetensorsSource::open(&dir.join("quantized.safetensors")).unwrap();
    let (_, shape, codes) = q.raw(&format!("{base}.qcodes")).unwrap();
    let (d_out, d_in) = (shape[0], shape[1]);
    let scales = q.load(&format!("{base}.scales")).unwrap();
    let ng = scales.shape[1];
    let zeros = i32s(q.raw(&format!("{base}.zeros")).unwrap().2);
    let g = i32s(q.raw(&format!("{base}.g_idx")).unwrap().2);
    let mut w = vec![0f32; d_out * d_in];
    for r in 0..d_out {
        for c in 0..d_in {
            let k = r * ng + g[c] as usize;
            w[r * d_in + c] =
                round(scales.data[k]) * (codes[r * d_in + c] as f32 - zeros[k] as f32);
        }
    }
    w
}

fn linear_names(cfg: &ModelConfig) -> Vec<String> {
    (0..cfg.num_layers)
        .flat_map(|i| {
            arch::layer_layout(cfg, i)
                .linears
                .into_iter()
                .map(move |l| arch::hf_layer_tensor(i, &l.path, "weight"))
        })
        .collect()
}

/// compressed-tensors and GPTQ: written from a GPTQ run with dynamic act-order (a non-trivial
/// g_idx), read back by shrink to exactly the dequantized weights; inspect counts packed weights.
#[test]
fn compressed_tensors_and_gptq_read_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let c = t.join("c");
    compress(
        &model,
        &calib,
        &c,
        &[
            "--bits",
            "4",
            "--group-size",
            "32",
            "--act-order",
            "dynamic",
        ],
    );
    let cfg = ModelConfig::from_hf_file(&c.join("config.json")).unwrap();
    let dense = SafetensorsSource::open(&c).unwrap();

    let ct = t.join("ct");
    ok(&[
        "export",
        "--model",
        &s(&c),
        "--format",
        "compressed-tensors",
        "--out",
        &s(&ct),
        "-q",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct.join("config.json")).unwrap()).unwrap();
    let qc = &v["quantization_config"];
    assert_eq!(qc["format"], "pack-quantized");
    assert_eq!(
        qc["config_groups"]["group_0"]["weights"]["actorder"],
        "group"
    );
    assert_eq!(qc["config_groups"]["group_0"]["weights"]["num_bits"], 4);
    let raw = SafetensorsSource::open(&ct).unwrap();
    let base = "model.layers.1.self_attn.q_proj";
    let (_, shape, _) = raw.raw(&format!("{base}.weight_packed")).unwrap();
    assert_eq!(shape, &[64, 8], "64 columns of 4 bits in 8 int32 words");
    let (_, zshape, _) = raw.raw(&format!("{base}.weight_zero_point")).unwrap();
    assert_eq!(
        zshape,
        &[8, 2],
        "zero points packed along the output dimension"
    );
    let gi = i32s(raw.raw(&format!("{base}.weight_g_idx")).unwrap().2);
    assert!(
        gi.iter().enumerate().any(|(c, &g)| g as usize != c / 32),
        "dynamic act-order should give a non-trivial g_idx"
    );
    drop(raw);

    let gq = t.join("gptq32");
    ok(&[
        "export",
        "--model",
        &s(&c),
        "--format",
        "gptq",
        "--scale-dtype",
        "f32",
        "--out",
        &s(&gq),
        "-q",
    ]);
    let gq16 = t.join("gptq16");
    ok(&[
        "export",
        "--model",
        &s(&c),
        "--format",
        "gptq",
        "--out",
        &s(&gq16),
        "-q",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gq16.join("config.json")).unwrap()).unwrap();
    assert_eq!(v["quantization_config"]["desc_act"], true);
    assert_eq!(v["quantization_config"]["checkpoint_format"], "gptq");

    let ct_src = ModelSource::open(&ct).unwrap();
    let g32_src = ModelSource::open(&gq).unwrap();
    let g16_src = ModelSource::open(&gq16).unwrap();
    for name in linear_names(&cfg) {
        let want = dense.load(&name).unwrap();
        assert_eq!(
            ct_src.tensors.load(&name).unwrap().data,
            want.data,
            "CT {name}"
        );
        assert_eq!(
            g32_src.tensors.load(&name).unwrap().data,
            want.data,
            "GPTQ f32 {name}"
        );
        let f16 = |x: f32| half::f16::from_f32(x).to_f32();
        let base = name.trim_end_matches(".weight");
        assert_eq!(
            g16_src.tensors.load(&name).unwrap().data,
            from_codes(&c, base, &f16),
            "GPTQ f16 {name}"
        );
    }
    // Non-linear tensors are unchanged.
    for name in [arch::HF_EMBED, arch::HF_NORM] {
        assert_eq!(
            ct_src.tensors.load(name).unwrap().data,
            dense.load(name).unwrap().data
        );
    }

    // inspect: packed weights count as the weights they stand for.
    let out = ok(&["inspect", &s(&ct)]);
    let line = out
        .lines()
        .find(|l| l.starts_with("quantized linears:"))
        .unwrap_or_else(|| panic!("no summary in {out}"));
    let bpw: f64 = line
        .split(": ")
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // 4-bit codes + f32 scale and 4-bit zero per 32 weights + g_idx: about 5.2 bits.
    assert!((5.0..5.6).contains(&bpw), "{line}");
    let out = ok(&["inspect", &s(&gq16)]);
    assert!(out.contains("quantized linears: 14 tensors"), "{out}");
    no_leftovers(t);
}

/// Failures are clean: a message naming the problem, no output, nothing half-written.
#[test]
fn export_failures_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let c3 = t.join("c3");
    compress(&model, &calib, &c3, &["--bits", "3", "--group-size", "32"]);
    let o = t.join("o");
    fails_with(
        &[
            "export",
            "--model",
            &s(&c3),
            "--format",
            "gptq",
            "--out",
            &s(&o),
        ],
        &["2, 4 and 8 bits"],
    );
    assert!(!o.exists());
    fails_with(
        &[
            "export",
            "--model",
            &s(&c3),
            "--format",
            "onnx",
            "--out",
            &s(&o),
        ],
        &["unknown format", "onnx"],
    );
    fails_with(
        &[
            "export",
            "--model",
            &s(&model),
            "--format",
            "compressed-tensors",
            "--out",
            &s(&o),
        ],
        &["nothing to export"],
    );
    fails_with(
        &[
            "export",
            "--model",
            &s(&model),
            "--format",
            "gguf",
            "--type",
            "Q9_9",
            "--out",
            &s(&o),
        ],
        &["unknown tensor type", "Q9_9"],
    );
    fails_with(
        &[
            "export",
            "--model",
            &s(&model),
            "--format",
            "gguf",
            "--out",
            &s(&o),
        ],
        &["--gguf-metadata"],
    );
    assert!(!o.exists());
    // An existing output is kept unless --force.
    ok(&[
        "export",
        "--model",
        &s(&c3),
        "--format",
        "compressed-tensors",
        "--out",
        &s(&o),
        "-q",
    ]);
    fails_with(
        &[
            "export",
            "--model",
            &s(&c3),
            "--format",
            "compressed-tensors",
            "--out",
            &s(&o),
        ],
        &["already exists", "--force"],
    );
    // 3-bit compressed-tensors uses the dense cross-word packing and still reads back exactly.
    let src = ModelSource::open(&o).unwrap();
    let dense = SafetensorsSource::open(&c3).unwrap();
    let n = arch::hf_layer_tensor(0, "mlp.down_proj", "weight");
    assert_eq!(
        src.tensors.load(&n).unwrap().data,
        dense.load(&n).unwrap().data
    );
    no_leftovers(t);
}

/// GGUF: reference quantization of every tensor (rows permuted for q/k), GPTQ codes carried over
/// into Q4_1 blocks, and an importance matrix that changes the rounding and round-trips through
/// llama-imatrix's file format.
#[test]
fn gguf_quantizes_carries_codes_and_uses_an_importance_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let g = gguf_file(t);
    let cfg = ModelConfig::from_hf_file(&tiny("mistral").join("config.json")).unwrap();
    let orig = SafetensorsSource::open(&tiny("mistral")).unwrap();

    let q8 = t.join("q8.gguf");
    export_gguf(&g, "Q8_0", &q8, &[]);
    let f = GgufFile::open(&q8).unwrap();
    assert_eq!(
        f.tensor("blk.0.attn_q.weight").unwrap().dtype,
        GgmlType::Q8_0
    );
    assert_eq!(
        f.tensor("blk.0.attn_norm.weight").unwrap().dtype,
        GgmlType::F32
    );
    assert_eq!(f.get("general.file_type").and_then(|v| v.as_u64()), Some(7));
    assert!(f.get("tokenizer.ggml.tokens").is_some());
    drop(f);
    let back = ModelSource::open(&q8).unwrap();
    for name in arch::hf_tensor_names(&cfg) {
        let x = orig.load(&name).unwrap();
        let got = back.tensors.load(&name).unwrap();
        if x.shape.len() == 1 {
            assert_eq!(got.data, x.data, "{name}");
            continue;
        }
        // Q8_0 rounds each row on its own, so the permutation commutes with it.
        let cols = x.shape[1];
        let bytes = gguf_quant::quantize(GgmlType::Q8_0, &x.data, cols, None).unwrap();
        let mut want = vec![0f32; x.data.len()];
        shrink_model::quants::dequantize(GgmlType::Q8_0, &bytes, &mut want).unwrap();
        assert_eq!(got.data, want, "{name}");
    }

    // GPTQ 4-bit asymmetric groups of 32 -> Q4_1 with the codes carried over.
    let calib = calib_text(t);
    let c = t.join("c");
    compress(&g, &calib, &c, &["--bits", "4", "--group-size", "32"]);
    let q41 = t.join("q41.gguf");
    let r = export_gguf_report(&c, &q41, &[]);
    assert_eq!(r["type"], "Q4_1");
    assert_eq!(r["carried_tensors"], 14);
    let back = ModelSource::open(&q41).unwrap();
    let q = SafetensorsSource::open(&c.join("quantized.safetensors")).unwrap();
    let f16 = |x: f32| half::f16::from_f32(x).to_f32();
    for name in linear_names(&cfg) {
        let base = name.trim_end_matches(".weight");
        let (_, shape, codes) = q.raw(&format!("{base}.qcodes")).unwrap();
        let (d_out, d_in) = (shape[0], shape[1]);
        let scales = q.load(&format!("{base}.scales")).unwrap();
        let zeros = i32s(q.raw(&format!("{base}.zeros")).unwrap().2);
        let ng = scales.shape[1];
        // Q4_1: y = q * d + m with d = f16(scale), m = f16(-scale * zero): the codes are shrink's.
        let mut want = vec![0f32; d_out * d_in];
        for rr in 0..d_out {
            for cc in 0..d_in {
                let k = rr * ng + cc / 32;
                let (sc, z) = (scales.data[k], zeros[k] as f32);
                want[rr * d_in + cc] = codes[rr * d_in + cc] as f32 * f16(sc) + f16(-sc * z);
            }
        }
        assert_eq!(back.tensors.load(&name).unwrap().data, want, "{name}");
    }
    // --no-carry re-quantizes instead (reference Q4_1 rounding of the dequantized weights).
    let q41b = t.join("q41b.gguf");
    let r = export_gguf_report(&c, &q41b, &["--no-carry", "--type", "Q4_1"]);
    assert_eq!(r["carried_tensors"], 0);

    // Importance matrix: computed from calibration text, saved, reloaded -> identical file.
    let im = t.join("im.gguf");
    let (a, b, plain) = (t.join("a.gguf"), t.join("b.gguf"), t.join("p.gguf"));
    export_gguf(
        &g,
        "Q4_0",
        &a,
        &[
            "--imatrix-calib",
            &s(&calib),
            "--imatrix-nsamples",
            "4",
            "--imatrix-seqlen",
            "32",
            "--imatrix-out",
            &s(&im),
        ],
    );
    export_gguf(&g, "Q4_0", &b, &["--imatrix", &s(&im)]);
    export_gguf(&g, "Q4_0", &plain, &[]);
    let (ba, bb, bp) = (
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        std::fs::read(&plain).unwrap(),
    );
    let fa = GgufFile::open(&a).unwrap();
    let fp = GgufFile::open(&plain).unwrap();
    let ta = fa
        .tensor_data(fa.tensor("blk.1.ffn_down.weight").unwrap())
        .to_vec();
    let tp = fp
        .tensor_data(fp.tensor("blk.1.ffn_down.weight").unwrap())
        .to_vec();
    assert_ne!(ta, tp, "the importance matrix must change the rounding");
    let fb = GgufFile::open(&b).unwrap();
    for ti in fa.tensors() {
        assert_eq!(
            fa.tensor_data(ti),
            fb.tensor_data(fb.tensor(&ti.name).unwrap()),
            "{}",
            ti.name
        );
    }
    assert_eq!(ba.len(), bb.len());
    assert!(!bp.is_empty());
    let imf = GgufFile::open(&im).unwrap();
    assert_eq!(
        imf.tensor("blk.0.attn_q.weight.in_sum2").unwrap().dims,
        vec![cfg.hidden_size as u64, 1]
    );
    // Overwriting needs --force; a failing export leaves nothing.
    fails_with(
        &[
            "export",
            "--model",
            &s(&g),
            "--format",
            "gguf",
            "--out",
            &s(&a),
        ],
        &["already exists"],
    );
    let bad = t.join("bad.gguf");
    fails_with(
        &[
            "export",
            "--model",
            &s(&g),
            "--format",
            "gguf",
            "--imatrix",
            &s(&calib),
            "--out",
            &s(&bad),
        ],
        &["calib.txt"],
    );
    assert!(!bad.exists());
    no_leftovers(t);
}

use cli_common as common;

/// The default model through a Hugging Face directory: `shrink convert` then GGUF export with the
/// tokenizer rebuilt from tokenizer.json gives the original file's vocabulary, merges, token types
/// and special ids, and the same tensors as exporting the GGUF directly (q/k permuted back).
#[test]
fn gguf_from_a_hugging_face_directory_matches_the_original_gguf() {
    let Some(model) = common::fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let hf = t.join("hf");
    ok(&["convert", &s(&model), "--out", &s(&hf), "-q"]);
    let (a, b) = (t.join("a.gguf"), t.join("b.gguf"));
    fails_with(
        &[
            "export",
            "--model",
            &s(&hf),
            "--format",
            "gguf",
            "--out",
            &s(&a),
        ],
        &["--tokenizer-pre"],
    );
    export_gguf(&hf, "Q8_0", &a, &["--tokenizer-pre", "smollm"]);
    export_gguf(&model, "Q8_0", &b, &[]);
    let (fa, fb, fo) = (
        GgufFile::open(&a).unwrap(),
        GgufFile::open(&b).unwrap(),
        GgufFile::open(&model).unwrap(),
    );
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
        "llama.rope.freq_base",
        "llama.attention.head_count_kv",
    ] {
        assert_eq!(fa.get(key), fo.get(key), "{key}");
    }
    assert_eq!(fa.tensors().len(), fb.tensors().len());
    for ti in fb.tensors() {
        let ta = fa.tensor(&ti.name).unwrap();
        assert_eq!(ta.dtype, ti.dtype, "{}", ti.name);
        assert!(
            fa.tensor_data(ta) == fb.tensor_data(ti),
            "{} differs",
            ti.name
        );
    }
}

/// `compress --gguf-type`: GPTQ on llama.cpp's own grid; the GGUF export writes its blocks as
/// they are, so the file's weights are the compressed model's weights bit for bit, and formats
/// that cannot hold those blocks refuse the directory.
#[test]
fn gguf_grid_blocks_are_written_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let g = gguf_file(t);
    let calib = calib_text(t);
    let cfg = ModelConfig::from_hf_file(&tiny("mistral").join("config.json")).unwrap();
    for (ty, written) in [
        ("Q4_0", "Q4_0"),
        ("q4_k", "Q5_0"),
        ("Q5_1", "Q5_1"),
        ("IQ3_S", "IQ4_NL"),
        ("IQ1_M", "IQ4_NL"),
        ("TQ2_0", "Q4_0"),
    ] {
        let c = t.join(format!("c-{ty}"));
        compress(&g, &calib, &c, &["--gguf-type", ty]);
        let out = t.join(format!("{ty}.gguf"));
        let r = export_gguf_report(&c, &out, &[]);
        assert_eq!(r["carried_tensors"], 14, "{ty}");
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(
            f.tensor("blk.0.ffn_down.weight").unwrap().dtype.name(),
            written,
            "{ty}"
        );
        drop(f);
        let back = ModelSource::open(&out).unwrap();
        let mine = SafetensorsSource::open(&c).unwrap();
        for name in linear_names(&cfg) {
            let (a, b) = (back.tensors.load(&name).unwrap(), mine.load(&name).unwrap());
            assert!(
                a.data
                    .iter()
                    .zip(&b.data)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{ty} {name}: the file's weights are not the compressed weights"
            );
        }
        fails_with(
            &[
                "export",
                "--model",
                &s(&c),
                "--format",
                "compressed-tensors",
                "--out",
                &s(&t.join("ct")),
                "-q",
            ],
            &["llama.cpp block grids", "--format gguf"],
        );
    }
    fails_with(
        &[
            "compress",
            "--model",
            &s(&g),
            "--method",
            "gptq",
            "--gguf-type",
            "BF16",
            "--calib",
            &s(&calib),
            "--out",
            &s(&t.join("x")),
            "-q",
        ],
        &["BF16"],
    );
    fails_with(
        &[
            "compress",
            "--model",
            &s(&g),
            "--method",
            "gptq",
            "--gguf-type",
            "Q4_0",
            "--bits",
            "3",
            "--calib",
            &s(&calib),
            "--out",
            &s(&t.join("x")),
            "-q",
        ],
        &["4-bit codes", "bits = 3"],
    );
}

/// `compress --gguf-type Q3_K_M`: each linear on the grid llama-quantize's Q3_K_M rules pick for
/// it, the recipe written as per-linear overrides (running it again changes nothing), and export
/// writes that mix with its file type.
#[test]
fn gguf_mix_types_follow_llama_quantize_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let g = gguf_file(t);
    let calib = calib_text(t);
    let c = t.join("c");
    compress(&g, &calib, &c, &["--gguf-type", "Q3_K_M"]);
    let recipe = std::fs::read_to_string(c.join("recipe.toml")).unwrap();
    assert!(recipe.contains("gguf_type = \"Q3_K_M\""), "{recipe}");
    assert!(recipe.contains("[[override]]"), "{recipe}");
    let out = t.join("m.gguf");
    let r = export_gguf_report(&c, &out, &[]);
    assert_eq!(r["carried_tensors"], 14);
    let f = GgufFile::open(&out).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap().dtype.name().to_string();
    // 64 columns: every K-type falls back (Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1)
    for l in 0..2 {
        assert_eq!(
            ty(&format!("blk.{l}.attn_v.weight")),
            "Q5_1",
            "attn_v {l}: Q5_K (i < 2)"
        );
        assert_eq!(ty(&format!("blk.{l}.attn_output.weight")), "Q5_0");
        assert_eq!(ty(&format!("blk.{l}.ffn_down.weight")), "Q5_0");
        assert_eq!(ty(&format!("blk.{l}.attn_q.weight")), "Q4_0");
        assert_eq!(ty(&format!("blk.{l}.ffn_up.weight")), "Q4_0");
    }
    assert_eq!(ty("output.weight"), "Q8_0");
    assert_eq!(ty("token_embd.weight"), "Q4_0");
    assert_eq!(
        f.get("general.file_type").and_then(|v| v.as_u64()),
        Some(12)
    );
    drop(f);
    // the written recipe reproduces the run
    let c2 = t.join("c2");
    compress(&g, &calib, &c2, &["--recipe", &s(&c.join("recipe.toml"))]);
    assert_eq!(
        std::fs::read_to_string(c2.join("recipe.toml")).unwrap(),
        recipe
    );
    assert_eq!(
        std::fs::read(c2.join("quantized.safetensors")).unwrap(),
        std::fs::read(c.join("quantized.safetensors")).unwrap()
    );
    // a mix is a stage's, not an override's
    let bad = t.join("bad.toml");
    std::fs::write(
        &bad,
        "[[stage]]\nmethod = \"gptq\"\ngguf_type = \"Q4_K\"\n[[override]]\nmatch = 'down_proj'\ngguf_type = \"Q4_K_M\"\n",
    )
    .unwrap();
    fails_with(
        &[
            "compress",
            "--model",
            &s(&g),
            "--recipe",
            &s(&bad),
            "--calib",
            &s(&calib),
            "--out",
            &s(&t.join("x")),
            "-q",
        ],
        &["Q4_K_M", "mix", "[[stage]]"],
    );
}
