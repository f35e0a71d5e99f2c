//! GGUF reader/writer and dequantizer tests.
//!
//! Reference fixtures come from `tools/reference/gguf_blocks.py` (gguf-py).

use std::path::{Path, PathBuf};

use half::f16;
use serde_json::Value;
use shrink_model::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use shrink_model::quants;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/gguf_blocks")
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------
// Round trip

fn every_value_type() -> Vec<(String, GgufValue)> {
    vec![
        ("t.u8".into(), GgufValue::U8(200)),
        ("t.i8".into(), GgufValue::I8(-100)),
        ("t.u16".into(), GgufValue::U16(60000)),
        ("t.i16".into(), GgufValue::I16(-30000)),
        ("t.u32".into(), GgufValue::U32(4_000_000_000)),
        ("t.i32".into(), GgufValue::I32(-2_000_000_000)),
        ("t.u64".into(), GgufValue::U64(u64::MAX)),
        ("t.i64".into(), GgufValue::I64(i64::MIN)),
        ("t.f32".into(), GgufValue::F32(-1.5e-7)),
        ("t.f64".into(), GgufValue::F64(std::f64::consts::PI)),
        ("t.bool_true".into(), GgufValue::Bool(true)),
        ("t.bool_false".into(), GgufValue::Bool(false)),
        ("t.string".into(), GgufValue::String("héllo ✓ \u{0}".into())),
        ("t.empty_string".into(), GgufValue::String(String::new())),
        (
            "t.array_u32".into(),
            GgufValue::Array(vec![GgufValue::U32(1), GgufValue::U32(2)]),
        ),
        (
            "t.array_str".into(),
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("".into()),
                GgufValue::String("ccc".into()),
            ]),
        ),
        (
            "t.array_f32".into(),
            GgufValue::Array(vec![GgufValue::F32(0.5), GgufValue::F32(-2.0)]),
        ),
        ("t.array_empty".into(), GgufValue::Array(vec![])),
        (
            "t.array_nested".into(),
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::I64(-1), GgufValue::I64(2)]),
                GgufValue::Array(vec![GgufValue::I64(3)]),
            ]),
        ),
        (
            "general.architecture".into(),
            GgufValue::String("llama".into()),
        ),
        ("llama.block_count".into(), GgufValue::U32(30)),
    ]
}

#[test]
fn round_trip_all_value_types_and_float_tensors() {
    for alignment in [None, Some(64u32)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round_trip.gguf");
        let mut w = GgufWriter::new();
        let mut meta = every_value_type();
        if let Some(a) = alignment {
            meta.push(("general.alignment".into(), GgufValue::U32(a)));
        }
        for (k, v) in &meta {
            w.add_metadata(k.clone(), v.clone());
        }
        let f32_vals: Vec<f32> = vec![1.0, -2.5, f32::INFINITY, 0.0, -0.0, 1e-40];
        let f16_vals: Vec<f16> = (0..64u16).map(|i| f16::from_bits(i * 1021)).collect();
        let f16_raw: Vec<u8> = f16_vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor("a.f32", vec![3, 2], GgmlType::F32, f32_bytes(&f32_vals))
            .unwrap();
        w.add_tensor("b.f16", vec![32, 2], GgmlType::F16, f16_raw.clone())
            .unwrap();
        w.add_tensor("c.scalar", vec![], GgmlType::F32, f32_bytes(&[7.0]))
            .unwrap();
        w.write(&path).unwrap();
        assert!(!path.with_extension("part").exists());

        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.path(), path.as_path());
        assert_eq!(g.alignment(), alignment.unwrap_or(32) as u64);
        assert_eq!(g.data_offset() % g.alignment(), 0);
        assert_eq!(g.metadata().len(), meta.len());
        for ((k, v), (k2, v2)) in g.metadata().iter().zip(&meta) {
            assert_eq!(k, k2);
            assert_eq!(v, v2, "key {k}");
            assert_eq!(g.get(k), Some(v2));
        }
        assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX);
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
        assert_eq!(g.get_i64("t.i64").unwrap(), i64::MIN);
        assert_eq!(g.get_f64("t.f64").unwrap(), std::f64::consts::PI);
        assert_eq!(g.get_f64("t.u16").unwrap(), 60000.0);
        assert_eq!(g.get_str("t.string").unwrap(), "héllo ✓ \u{0}");
        assert!(g.get_bool("t.bool_true").unwrap());
        assert_eq!(
            g.get_str_array("t.array_str").unwrap(),
            vec!["a", "", "ccc"]
        );
        assert_eq!(g.get_i64_array("t.array_u32").unwrap(), vec![1, 2]);
        assert_eq!(g.get_f32_array("t.array_f32").unwrap(), vec![0.5, -2.0]);
        assert_eq!(g.architecture().unwrap(), "llama");

        assert_eq!(g.tensors().len(), 3);
        let a = g.tensor("a.f32").unwrap();
        assert_eq!(a.dims, vec![3, 2]);
        assert_eq!(a.shape_row_major(), vec![2, 3]);
        assert_eq!(a.dtype, GgmlType::F32);
        assert_eq!(a.n_elements(), 6);
        assert_eq!(a.n_bytes(), 24);
        assert_eq!(g.tensor_data(a), f32_bytes(&f32_vals).as_slice());
        let back = g.dequantize("a.f32").unwrap();
        assert!(back.iter().zip(&f32_vals).all(|(x, y)| same_bits(*x, *y)));

        let b = g.tensor("b.f16").unwrap();
        assert_eq!(b.offset % g.alignment(), 0);
        assert_eq!(g.tensor_data(b), f16_raw.as_slice());
        let back = g.dequantize("b.f16").unwrap();
        assert_eq!(back.len(), 64);
        for (x, h) in back.iter().zip(&f16_vals) {
            assert!(same_bits(*x, h.to_f32()));
        }
        let c = g.tensor("c.scalar").unwrap();
        assert_eq!(c.n_elements(), 1);
        assert_eq!(g.dequantize("c.scalar").unwrap(), vec![7.0]);
        let row: Vec<u32> = g
            .dequantize_rows("b.f16", 1..2)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let want: Vec<u32> = back[32..].iter().map(|x| x.to_bits()).collect();
        assert_eq!(row, want);
        assert!(g.tensor("nope").is_none());
        let e = format!("{:#}", g.dequantize("nope").unwrap_err());
        assert!(e.contains("round_trip.gguf") && e.contains("'nope'"), "{e}");
    }
}

#[test]
fn metadata_accessor_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let mut w = GgufWriter::new();
    for (k, v) in every_value_type() {
        w.add_metadata(k, v);
    }
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let e = g.get_u64("llama.context_length").unwrap_err().to_string();
    assert!(
        e.contains("model.gguf") && e.contains("'llama.context_length' is missing"),
        "{e}"
    );
    let e = g.get_u64("t.string").unwrap_err().to_string();
    assert!(
        e.contains("model.gguf") && e.contains("'t.string' has type string, expected an integer"),
        "{e}"
    );
    let e = g.get_u64("t.i8").unwrap_err().to_string();
    assert!(e.contains("non-negative"), "{e}");
    let e = g.get_str("t.u32").unwrap_err().to_string();
    assert!(e.contains("has type u32, expected a string"), "{e}");
    let e = g.get_str_array("t.array_u32").unwrap_err().to_string();
    assert!(e.contains("has type array of u32"), "{e}");
    let e = g.get_i64_array("t.array_str").unwrap_err().to_string();
    assert!(e.contains("t.array_str"), "{e}");
    assert!(g.get_f64("t.bool_true").is_err());
    assert!(g.get_u64_opt("absent").unwrap().is_none());
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    assert!(w
        .add_tensor("x", vec![4], GgmlType::F32, vec![0; 15])
        .is_err());
    assert!(w
        .add_tensor("q", vec![33], GgmlType::Q8_0, vec![0; 34])
        .is_err());
    assert!(w.add_tensor("z", vec![0], GgmlType::F32, vec![]).is_err());
    assert!(w
        .add_tensor("d", vec![1; 5], GgmlType::F32, vec![0; 4])
        .is_err());
    w.add_tensor("x", vec![4], GgmlType::F32, vec![0; 16])
        .unwrap();
    assert!(w
        .add_tensor("x", vec![4], GgmlType::F32, vec![0; 16])
        .is_err());
    w.add_metadata(
        "mixed",
        GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]),
    );
    assert!(w.to_bytes().is_err());
    w.add_metadata("mixed", GgufValue::U8(1)); // replaces
    w.add_metadata("general.alignment", GgufValue::U32(48));
    assert!(w.to_bytes().is_err());
    w.add_metadata("general.alignment", GgufValue::U32(16));
    let bytes = w.to_bytes().unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
}

// ---------------------------------------------------------------------------
// Malformed files

/// Hand-assembled GGUF bytes.
#[derive(Clone)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B(b"GGUF".to_vec());
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Self {
        let padded = self.0.len().div_ceil(32) * 32;
        self.0.resize(padded, 0);
        self.0.resize(padded + n, 0x11);
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

fn open_bytes(name: &str, bytes: &[u8]) -> anyhow::Result<GgufFile> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path)
}

/// Asserts that opening `bytes` fails with a message naming the file and containing `word`.
#[track_caller]
fn expect_err(name: &str, bytes: &[u8], word: &str) {
    let file = format!("{name}.gguf");
    match open_bytes(&file, bytes) {
        Ok(_) => panic!("{file}: expected an error containing {word:?}, got Ok"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                msg.contains(&file),
                "{file}: message lacks file name: {msg}"
            );
            assert!(msg.contains(word), "{file}: message lacks {word:?}: {msg}");
        }
    }
}

/// A valid file with two keys and two F32 tensors, built by hand.
fn valid_bytes() -> B {
    let mut b = B::header(3, 2, 2);
    b.kv_u32("a.count", 7)
        .str("a.name")
        .u32(8)
        .str("x")
        .tensor("t0", &[8], 0, 0)
        .tensor("t1", &[4, 2], 0, 32)
        .data(64);
    b
}

#[test]
fn hand_built_valid_file_opens() {
    let g = open_bytes("valid.gguf", &valid_bytes().bytes()).unwrap();
    assert_eq!(g.get_u64("a.count").unwrap(), 7);
    assert_eq!(g.get_str("a.name").unwrap(), "x");
    assert_eq!(g.tensors()[1].offset, 32);
    assert_eq!(g.dequantize("t1").unwrap().len(), 8);
    // v2 has the same layout
    let mut v2 = valid_bytes().bytes();
    v2[4] = 2;
    assert_eq!(open_bytes("v2.gguf", &v2).unwrap().version(), 2);
}

#[test]
fn malformed_header() {
    expect_err("empty", &[], "magic");
    expect_err("bad_magic", b"GGML\x03\0\0\0", "magic");
    expect_err("short_magic", b"GG", "magic");
    expect_err("version1", &B::header(1, 0, 0).bytes(), "version");
    expect_err("version99", &B::header(99, 0, 0).bytes(), "version");
    expect_err(
        "big_endian",
        &B::header(3u32.swap_bytes(), 0, 0).bytes(),
        "big-endian",
    );
    expect_err(
        "truncated_header",
        &B::header(3, 0, 0).bytes()[..12],
        "truncated",
    );
    expect_err(
        "huge_kv_count",
        &B::header(3, 0, u64::MAX).bytes(),
        "cannot fit",
    );
    expect_err(
        "huge_tensor_count",
        &B::header(3, 1 << 40, 0).bytes(),
        "cannot fit",
    );
    // No tensors and no metadata is a valid (if useless) file.
    assert!(open_bytes("minimal.gguf", &B::header(3, 0, 0).bytes()).is_ok());
}

#[test]
fn malformed_metadata() {
    let mut b = B::header(3, 0, 1);
    b.u64(u64::MAX).raw(b"key").u32(4).u32(0);
    expect_err("huge_key_len", &b.bytes(), "exceeds");

    let mut b = B::header(3, 0, 1);
    b.str("k").u32(8).u64(1 << 40).raw(b"abc");
    expect_err("huge_string_len", &b.bytes(), "exceeds");

    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(6).u64(1 << 60);
    expect_err("huge_array_len", &b.bytes(), "needs at least");

    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(6).u64(u64::MAX / 2).u64(0);
    expect_err("overflowing_array_len", &b.bytes(), "array");

    // Array of 10 strings with only 3 present.
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(8).u64(10).str("a").str("b").str("c");
    expect_err("truncated_string_array", &b.bytes(), "array");

    let mut b = B::header(3, 0, 2);
    b.kv_u32("dup", 1).kv_u32("dup", 2);
    expect_err("dup_key", &b.bytes(), "duplicate metadata key 'dup'");

    let mut b = B::header(3, 0, 1);
    b.u64(2).raw(&[0xff, 0xfe]).u32(4).u32(0);
    expect_err("bad_utf8_key", &b.bytes(), "UTF-8");

    let mut b = B::header(3, 0, 1);
    b.str("k").u32(8).u64(3).raw(&[b'a', 0xc3, 0x28]);
    expect_err("bad_utf8_value", &b.bytes(), "UTF-8");

    let mut b = B::header(3, 0, 1);
    b.str("k").u32(13).u32(0);
    expect_err("unknown_value_type", &b.bytes(), "unknown value type");

    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(77).u64(1).u32(0);
    expect_err("unknown_array_type", &b.bytes(), "unknown value type");

    let mut b = B::header(3, 0, 1);
    b.str("k").u32(7).u8(2);
    expect_err("bad_bool", &b.bytes(), "bool");

    // 100 levels of arrays, each with one element.
    let mut b = B::header(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..100 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    expect_err("deep_nesting", &b.bytes(), "nested");

    let mut b = B::header(3, 0, 1);
    b.kv_u32("general.alignment", 3);
    expect_err("bad_alignment", &b.bytes(), "alignment");

    let mut b = B::header(3, 0, 1);
    b.kv_u32("general.alignment", 0);
    expect_err("zero_alignment", &b.bytes(), "alignment");
}

#[test]
fn malformed_tensor_infos() {
    let one = |name: &str, dims: &[u64], ty: u32, offset: u64, data: usize| {
        let mut b = B::header(3, 1, 0);
        b.tensor(name, dims, ty, offset).data(data);
        b.bytes()
    };
    assert!(open_bytes("ok.gguf", &one("w", &[32], 8, 0, 34)).is_ok());
    expect_err(
        "five_dims",
        &one("w", &[1, 1, 1, 1, 1], 0, 0, 4),
        "dimensions",
    );
    expect_err("zero_dim", &one("w", &[4, 0], 0, 0, 0), "zero-sized");
    expect_err(
        "dims_overflow",
        &one("w", &[1 << 40, 1 << 40], 0, 0, 0),
        "overflow",
    );
    expect_err("bytes_overflow", &one("w", &[1 << 62], 0, 0, 0), "overflow");
    expect_err("negative_dim", &one("w", &[u64::MAX], 0, 0, 0), "overflow");
    expect_err(
        "unknown_type",
        &one("w", &[4], 4, 0, 16),
        "unknown ggml type",
    );
    expect_err(
        "unknown_type_nvfp4",
        &one("w", &[64], 40, 0, 36),
        "unknown ggml type id 40",
    );
    expect_err(
        "unknown_type_big",
        &one("w", &[4], 1000, 0, 16),
        "unknown ggml type",
    );
    expect_err(
        "not_block_multiple",
        &one("w", &[33], 8, 0, 34),
        "block size",
    );
    expect_err("misaligned", &one("w", &[4], 0, 4, 32), "misaligned");
    expect_err("data_past_eof", &one("w", &[32], 8, 0, 33), "past the end");
    expect_err(
        "offset_past_eof",
        &one("w", &[4], 0, 1 << 20, 16),
        "past the end",
    );
    expect_err(
        "offset_overflow",
        &one("w", &[4], 0, u64::MAX - 31, 16),
        "past the end",
    );

    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[16], 0, 0).tensor("b", &[8], 0, 32).data(64);
    expect_err("overlap", &b.bytes(), "overlap");

    let mut b = B::header(3, 2, 0);
    b.tensor("same", &[8], 0, 0)
        .tensor("same", &[8], 0, 32)
        .data(64);
    expect_err("dup_tensor", &b.bytes(), "duplicate tensor name 'same'");

    let mut b = B::header(3, 1, 0);
    b.u64(2)
        .raw(&[0xc0, 0x80])
        .u32(1)
        .u64(4)
        .u32(0)
        .u64(0)
        .data(16);
    expect_err("bad_utf8_tensor", &b.bytes(), "UTF-8");

    // A file that declares more tensors than it contains.
    let mut b = B::header(3, 3, 0);
    b.tensor("a", &[8], 0, 0).tensor("b", &[8], 0, 32);
    expect_err("missing_tensor_info", &b.bytes(), "truncated");
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    // Writer output with metadata of every type and two tensors.
    let mut w = GgufWriter::new();
    for (k, v) in every_value_type() {
        w.add_metadata(k, v);
    }
    w.add_tensor("a", vec![8], GgmlType::F32, vec![1; 32])
        .unwrap();
    w.add_tensor("b", vec![32], GgmlType::Q8_0, vec![2; 34])
        .unwrap();
    let full = w.to_bytes().unwrap();
    assert!(open_bytes("full.gguf", &full).is_ok());
    let dir = tempfile::tempdir().unwrap();
    for len in 0..full.len() {
        let path = dir.path().join(format!("cut{len}.gguf"));
        std::fs::write(&path, &full[..len]).unwrap();
        let msg = match GgufFile::open(&path) {
            Ok(_) => panic!("prefix of {len} bytes opened"),
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.contains(&format!("cut{len}.gguf")), "{msg}");
        assert!(
            msg.contains("truncated") || msg.contains("magic"),
            "{len}: {msg}"
        );
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Flip each header byte of a valid file to a few values: any result is fine but no panic.
    let mut w = GgufWriter::new();
    for (k, v) in every_value_type() {
        w.add_metadata(k, v);
    }
    w.add_tensor("a", vec![8], GgmlType::F32, vec![1; 32])
        .unwrap();
    w.add_tensor("b", vec![256], GgmlType::Q4K, vec![2; 144])
        .unwrap();
    let full = w.to_bytes().unwrap();
    let header_len = full.len() - 144 - 32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flip.gguf");
    for i in 0..header_len {
        for v in [0x00u8, 0xff, 0x80, full[i] ^ 1] {
            let mut b = full.clone();
            b[i] = v;
            std::fs::write(&path, &b).unwrap();
            if let Ok(g) = GgufFile::open(&path) {
                for t in g.tensors() {
                    let _ = g.dequantize(&t.name);
                }
            }
        }
    }
}

#[test]
fn every_known_type_dequantizes_and_sizes_are_checked() {
    // Every type id the reader accepts dequantizes (ids it does not know, e.g. NVFP4 = 40, are
    // refused when the file is opened: see `malformed_tensor_infos`).
    for ty in GgmlType::ALL {
        assert!(ty.can_dequantize(), "{ty}");
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let mut out = vec![f32::NAN; 2 * bs];
        quants::dequantize(ty, &vec![0; 2 * ts], &mut out).unwrap();
        // All-zero blocks: a zero scale (and for MXFP4 the code 0), so every value is +-0
        // (integer and float types give +0).
        assert!(out.iter().all(|&v| v == 0.0), "{ty}: {out:?}");
        // Length mismatches in the raw API are errors, not panics.
        assert!(
            quants::dequantize(ty, &vec![0; 2 * ts + 1], &mut out).is_err(),
            "{ty}"
        );
        assert!(
            quants::dequantize(ty, &vec![0; 2 * ts - 1], &mut out).is_err(),
            "{ty}"
        );
        if bs > 1 {
            let mut out = vec![0f32; 2 * bs - 1];
            let e = quants::dequantize(ty, &vec![0; 2 * ts], &mut out).unwrap_err();
            assert!(e.to_string().contains("block size"), "{ty}: {e}");
        }
    }
    // A GGUF file holding an i-quant opens, names its type and dequantizes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("iq", vec![256], GgmlType::IQ2_XXS, vec![0; 66])
        .unwrap();
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensor("iq").unwrap().dtype.name(), "IQ2_XXS");
    assert_eq!(g.dequantize("iq").unwrap(), vec![0.0; 256]);
}

#[test]
fn type_table() {
    for (ty, id, name, bs, ts) in [
        (GgmlType::F32, 0, "F32", 1, 4),
        (GgmlType::F16, 1, "F16", 1, 2),
        (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
        (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
        (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
        (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
        (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
        (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
        (GgmlType::Q2K, 10, "Q2_K", 256, 84),
        (GgmlType::Q3K, 11, "Q3_K", 256, 110),
        (GgmlType::Q4K, 12, "Q4_K", 256, 144),
        (GgmlType::Q5K, 13, "Q5_K", 256, 176),
        (GgmlType::Q6K, 14, "Q6_K", 256, 210),
        (GgmlType::Q8K, 15, "Q8_K", 256, 292),
        (GgmlType::I8, 24, "I8", 1, 1),
        (GgmlType::I16, 25, "I16", 1, 2),
        (GgmlType::I32, 26, "I32", 1, 4),
        (GgmlType::I64, 27, "I64", 1, 8),
        (GgmlType::F64, 28, "F64", 1, 8),
        (GgmlType::BF16, 30, "BF16", 1, 2),
        (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
        (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
        (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
        (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
        (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
        (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
        (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
        (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
        (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
        (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
        (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
        (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    ] {
        assert_eq!(ty.to_u32(), id);
        assert_eq!(GgmlType::from_u32(id), Some(ty));
        assert_eq!(ty.name(), name);
        assert_eq!(GgmlType::from_name(name), Some(ty));
        assert_eq!((ty.block_size(), ty.type_size()), (bs, ts), "{name}");
        assert!(ty.can_dequantize());
    }
    for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, 1000, u32::MAX] {
        assert_eq!(GgmlType::from_u32(id), None, "{id}");
    }
    for t in GgmlType::ALL {
        assert_eq!(GgmlType::from_u32(t.to_u32()), Some(t));
    }
}

// ---------------------------------------------------------------------------
// Exactness against gguf-py

struct Case {
    ty: GgmlType,
    raw: Vec<u8>,
    expected: Vec<f32>,
}

fn reference_cases() -> Vec<Case> {
    let dir = fixtures();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24, "fixture set changed");
    cases
        .iter()
        .map(|c| {
            let name = c["type"].as_str().unwrap();
            let ty = GgmlType::from_name(name).unwrap();
            assert_eq!(ty.to_u32() as u64, c["type_id"].as_u64().unwrap(), "{name}");
            let raw = std::fs::read(dir.join(c["raw"].as_str().unwrap())).unwrap();
            let expected = f32s(&std::fs::read(dir.join(c["expected"].as_str().unwrap())).unwrap());
            assert_eq!(expected.len() as u64, c["n_elements"].as_u64().unwrap());
            Case { ty, raw, expected }
        })
        .collect()
}

#[track_caller]
fn assert_bits_eq(ty: GgmlType, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            same_bits(*g, *e),
            "{ty}: element {i}: got {g:e} ({:#010x}), gguf-py gives {e:e} ({:#010x})",
            g.to_bits(),
            e.to_bits()
        );
    }
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let cases = reference_cases();
    let names: Vec<&str> = cases.iter().map(|c| c.ty.name()).collect();
    for required in [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16",
        "BF16", "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S",
        "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4",
    ] {
        assert!(names.contains(&required), "missing fixture for {required}");
    }
    for c in &cases {
        let mut out = vec![0f32; c.expected.len()];
        quants::dequantize(c.ty, &c.raw, &mut out).unwrap();
        assert_bits_eq(c.ty, &out, &c.expected);
    }
}

/// One case of the gguf-py fixture, every value compared bit for bit.
fn check_reference_case(ty: GgmlType) {
    let cases = reference_cases();
    let c = cases
        .iter()
        .find(|c| c.ty == ty)
        .unwrap_or_else(|| panic!("no fixture for {ty}"));
    assert_eq!(
        c.raw.len(),
        c.expected.len() / ty.block_size() * ty.type_size()
    );
    let mut out = vec![f32::NAN; c.expected.len()];
    quants::dequantize(ty, &c.raw, &mut out).unwrap();
    assert_bits_eq(ty, &out, &c.expected);
    // The fixture is not degenerate: both signs, and more distinct values than blocks.
    assert!(c.expected.iter().any(|&v| v > 0.0) && c.expected.iter().any(|&v| v < 0.0));
    let mut distinct: Vec<u32> = c.expected.iter().map(|v| v.to_bits()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let n_blocks = c.expected.len() / ty.block_size();
    assert!(
        distinct.len() > n_blocks,
        "{ty}: {} distinct values",
        distinct.len()
    );
}

macro_rules! gguf_py_case {
    ($($name:ident => $ty:ident,)*) => {$(
        #[test]
        fn $name() {
            check_reference_case(GgmlType::$ty);
        }
    )*};
}

gguf_py_case! {
    iq4_nl_matches_gguf_py => IQ4_NL,
    iq4_xs_matches_gguf_py => IQ4_XS,
    iq2_xxs_matches_gguf_py => IQ2_XXS,
    iq2_xs_matches_gguf_py => IQ2_XS,
    iq2_s_matches_gguf_py => IQ2_S,
    iq3_xxs_matches_gguf_py => IQ3_XXS,
    iq3_s_matches_gguf_py => IQ3_S,
    iq1_s_matches_gguf_py => IQ1_S,
    iq1_m_matches_gguf_py => IQ1_M,
    tq1_0_matches_gguf_py => TQ1_0,
    tq2_0_matches_gguf_py => TQ2_0,
    mxfp4_matches_gguf_py => MXFP4,
}

#[test]
fn dequantize_parallel_path_and_gguf_file_match() {
    // Tile each case past the parallel threshold, run it through a GGUF file.
    let dir = tempfile::tempdir().unwrap();
    for c in reference_cases() {
        let reps = 100_000 / c.expected.len() + 1;
        let raw = c.raw.repeat(reps);
        let expected = c.expected.repeat(reps);
        let mut out = vec![0f32; expected.len()];
        quants::dequantize(c.ty, &raw, &mut out).unwrap();
        assert_bits_eq(c.ty, &out, &expected);

        let path = dir.path().join(format!("{}.gguf", c.ty.name()));
        let row = c.expected.len() as u64;
        let mut w = GgufWriter::new();
        w.add_tensor("w", vec![row, reps as u64], c.ty, raw)
            .unwrap();
        w.write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_bits_eq(c.ty, &g.dequantize("w").unwrap(), &expected);
        assert_bits_eq(c.ty, &g.dequantize_rows("w", 2..3).unwrap(), &c.expected);
    }
}

// ---------------------------------------------------------------------------
// The real default model

#[test]
fn smollm2_q4_1_model() {
    let path = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "note: {} is absent, skipping the real-model GGUF test",
            path.display()
        );
        return;
    }
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2_q4_1.json")).unwrap(),
    )
    .unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(
        g.tensors().len() as u64,
        fixture["n_tensors"].as_u64().unwrap()
    );
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(fixture["block_count"].as_u64().unwrap(), 30);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len() >= 49152);

    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dtype, GgmlType::Q8_0);
    assert_eq!(emb.dims, vec![576, 49152]);
    assert_eq!(emb.shape_row_major(), vec![49152, 576]);
    assert_eq!(
        g.tensor("blk.0.attn_q.weight").unwrap().dtype,
        GgmlType::Q4_1
    );

    for (name, fx) in fixture["tensors"].as_object().unwrap() {
        let info = g.tensor(name).unwrap();
        assert_eq!(info.dtype.name(), fx["type"].as_str().unwrap());
        let dims: Vec<u64> = fx["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims, dims);
        let t0 = std::time::Instant::now();
        let v = g.dequantize(name).unwrap();
        eprintln!(
            "{name}: {} {} values dequantized in {:?}",
            info.dtype,
            v.len(),
            t0.elapsed()
        );
        assert_eq!(v.len() as u64, fx["n_elements"].as_u64().unwrap());
        let bits_sum = v
            .iter()
            .fold(0u64, |acc, x| acc.wrapping_add(x.to_bits() as u64));
        assert_eq!(
            bits_sum,
            fx["bits_sum"].as_u64().unwrap(),
            "{name}: bit checksum"
        );
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        let want = fx["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{name}: sum {sum} vs {want}"
        );
        let row_len = dims[0] as usize;
        for (r, rf) in fx["rows"].as_object().unwrap() {
            let r: usize = r.parse().unwrap();
            let bits: Vec<u32> = rf["bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u32)
                .collect();
            let got: Vec<u32> = v[r * row_len..r * row_len + 16]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert_eq!(got, bits, "{name} row {r}");
            let row = g.dequantize_rows(name, r as u64..r as u64 + 1).unwrap();
            assert_eq!(row.as_slice(), &v[r * row_len..(r + 1) * row_len]);
        }
    }
}

/// An empty metadata array is written with the element type llama.cpp expects for its key:
/// llama.cpp refuses a vocabulary whose empty `tokenizer.ggml.merges` is typed u8 ("invalid gguf
/// type for tokenizer.ggml.merges"), which is what a byte-level BPE without merges gives.
#[test]
fn empty_arrays_take_the_type_of_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.ggml.merges", GgufValue::Array(vec![]));
    w.add_metadata("tokenizer.ggml.scores", GgufValue::Array(vec![]));
    w.add_metadata("x.other", GgufValue::Array(vec![]));
    w.write(&path).unwrap();
    let b = std::fs::read(&path).unwrap();
    // after each key: value type (u32 9 = array), element type (u32), length (u64 0)
    let elem_type = |key: &str| {
        let k = key.as_bytes();
        let at = b.windows(k.len()).position(|w| w == k).unwrap() + k.len();
        assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 9);
        assert_eq!(
            u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()),
            0
        );
        u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap())
    };
    assert_eq!(elem_type("tokenizer.ggml.merges"), 8, "string");
    assert_eq!(elem_type("tokenizer.ggml.scores"), 6, "f32");
    assert_eq!(elem_type("x.other"), 0, "u8");
    assert!(GgufFile::open(&path).is_ok());
}

// ---------------------------------------------------------------------------
// A model whose linears are i-quants, ternary and MXFP4

/// Seeded random blocks of `ty` whose scale is small and finite, so a forward pass stays finite:
/// the f16 `d` of every block is 2^-10 (IQ1_M's is split over four nibbles), MXFP4's e8m0
/// exponent gives 2^-10 as well; every other byte is random.
fn small_scale_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let ts = ty.type_size();
    let mut raw: Vec<u8> = (0..n_blocks * ts)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    let d = f16::from_f32(1.0 / 1024.0).to_bits();
    for b in raw.chunks_exact_mut(ts) {
        match ty {
            GgmlType::IQ1_M => {
                for k in 0..4 {
                    let nib = ((d >> (4 * k)) & 0xF) as u8;
                    b[49 + 2 * k] = (b[49 + 2 * k] & 0x0F) | (nib << 4);
                }
            }
            GgmlType::MXFP4 => b[0] = 118, // 2^(118 - 128)
            GgmlType::TQ1_0 => b[52..54].copy_from_slice(&d.to_le_bytes()),
            GgmlType::TQ2_0 => b[64..66].copy_from_slice(&d.to_le_bytes()),
            _ => b[0..2].copy_from_slice(&d.to_le_bytes()),
        }
    }
    raw
}

/// The tiny Llama fixture widened to 256 (hidden and FFN size, 16 heads, 8 KV heads of 16), its
/// 15 matrices stored as IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0,
/// MXFP4, IQ4_NL, IQ4_XS in turn: the file opens as a model, every tensor loads as the
/// dequantized blocks (q/k as a row permutation of them), and the forward pass is finite.
#[test]
fn llama_with_every_new_type_loads_and_runs() {
    use shrink_model::ModelSource;
    let types = [
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ];
    let tiny =
        GgufFile::open(&workspace_root().join("tests/fixtures/tiny/llama/model.f32.gguf")).unwrap();
    let (h, kv, vocab) = (256u64, 128u64, 128u64);
    let mut w = GgufWriter::new();
    for (k, v) in tiny.metadata() {
        w.add_metadata(k.clone(), v.clone());
    }
    w.add_metadata("llama.embedding_length", GgufValue::U32(h as u32));
    w.add_metadata("llama.feed_forward_length", GgufValue::U32(h as u32));
    w.add_metadata("llama.attention.head_count", GgufValue::U32(16));
    w.add_metadata("llama.attention.head_count_kv", GgufValue::U32(8));
    let rope = tiny.tensor("rope_freqs.weight").unwrap();
    w.add_tensor(
        "rope_freqs.weight",
        rope.dims.clone(),
        GgmlType::F32,
        tiny.tensor_data(rope).to_vec(),
    )
    .unwrap();
    let ones = f32_bytes(&vec![1.0; h as usize]);
    w.add_tensor("output_norm.weight", vec![h], GgmlType::F32, ones.clone())
        .unwrap();
    let mut mats: Vec<(String, u64)> = vec![("token_embd.weight".into(), vocab)];
    for l in 0..2 {
        for norm in ["attn_norm", "ffn_norm"] {
            w.add_tensor(
                format!("blk.{l}.{norm}.weight"),
                vec![h],
                GgmlType::F32,
                ones.clone(),
            )
            .unwrap();
        }
        for (m, rows) in [
            ("attn_q", h),
            ("attn_k", kv),
            ("attn_v", kv),
            ("attn_output", h),
            ("ffn_gate", h),
            ("ffn_up", h),
            ("ffn_down", h),
        ] {
            mats.push((format!("blk.{l}.{m}.weight"), rows));
        }
    }
    // name -> (type, rows, dequantized values in ggml order = row-major [rows, 256])
    let mut want = std::collections::HashMap::new();
    for (i, (name, rows)) in mats.iter().enumerate() {
        let ty = types[i % types.len()];
        let n = (h * rows) as usize;
        let raw = small_scale_blocks(ty, n / ty.block_size(), i as u64 + 1);
        let mut values = vec![0f32; n];
        quants::dequantize(ty, &raw, &mut values).unwrap();
        assert!(
            values.iter().all(|v| v.is_finite() && v.abs() < 8.0),
            "{ty}"
        );
        w.add_tensor(name.clone(), vec![h, *rows], ty, raw).unwrap();
        want.insert(name.clone(), (ty, *rows, values));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq_llama.gguf");
    w.write(&path).unwrap();

    let g = GgufFile::open(&path).unwrap();
    let mut seen: Vec<GgmlType> = g.tensors().iter().map(|t| t.dtype).collect();
    seen.sort_by_key(|t| t.to_u32());
    seen.dedup();
    assert_eq!(seen.len(), 1 + types.len(), "{seen:?}");

    let src = ModelSource::open(&path).unwrap();
    assert!(src.is_gguf);
    let cfg = &src.config;
    assert_eq!((cfg.hidden_size, cfg.intermediate_size), (256, 256));
    assert_eq!((cfg.num_heads, cfg.num_kv_heads), (16, 8));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for e in shrink_model::arch::tensor_table(cfg) {
        let Some((ty, rows, values)) = want.get(&e.gguf.name) else {
            continue;
        };
        let t = src.tensors.load(&e.hf).unwrap();
        assert_eq!(t.shape, vec![*rows as usize, h as usize], "{}", e.hf);
        if e.gguf.name.contains("attn_q") || e.gguf.name.contains("attn_k") {
            // llama.cpp's q/k row permutation is undone on load: same values, other row order.
            let (mut a, mut b) = (bits(&t.data), bits(values));
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "{ty} {}", e.hf);
            assert_ne!(
                bits(&t.data),
                bits(values),
                "{ty} {}: rows not permuted",
                e.hf
            );
        } else {
            assert_eq!(bits(&t.data), bits(values), "{ty} {}", e.hf);
        }
        want.remove(&e.gguf.name);
    }
    assert!(want.is_empty(), "not loaded: {:?}", want.keys());

    let mut model = src.load_all().unwrap();
    let ids: Vec<u32> = vec![1, 40, 41, 42, 7, 99];
    let hidden = model.hidden_states(&ids, 1, ids.len()).unwrap();
    let logits = model.logits(&hidden, ids.len());
    assert_eq!(logits.len(), ids.len() * vocab as usize);
    assert!(logits.iter().all(|v| v.is_finite()));
    assert!(logits.iter().any(|&v| v != logits[0]));
}

/// `predicted_len` is the length `to_bytes` gives, for every metadata type, odd tensor sizes
/// (padding), quantized blocks, and with or without the last tensor padded.
#[test]
fn predicted_len_equals_the_written_length() {
    for pad_end in [false, true] {
        let mut w = GgufWriter::new();
        if pad_end {
            w.pad_end();
        }
        for (k, v) in every_value_type() {
            w.add_metadata(k, v);
        }
        let tensors: Vec<(String, Vec<u64>, GgmlType)> = vec![
            ("a".into(), vec![3], GgmlType::F32),
            ("blk.0.attn_q.weight".into(), vec![64, 5], GgmlType::Q8_0),
            ("c".into(), vec![256, 2, 3], GgmlType::Q4K),
            ("d".into(), vec![7], GgmlType::F16),
        ];
        for (n, d, t) in &tensors {
            let info_bytes = GgmlType::bytes_for(t, d.iter().product()).unwrap();
            w.add_tensor(n.clone(), d.clone(), *t, vec![0u8; info_bytes as usize])
                .unwrap();
        }
        let written = w.to_bytes().unwrap().len() as u64;
        assert_eq!(
            w.predicted_len(&tensors).unwrap(),
            written,
            "pad_end {pad_end}"
        );
        // a different type changes the prediction by the data alone
        let mut other = tensors.clone();
        other[1].2 = GgmlType::Q4_0;
        let d = w.predicted_len(&tensors).unwrap() - w.predicted_len(&other).unwrap();
        // Q8_0: 5 rows x 68 bytes = 340, padded to 352; Q4_0: 5 x 36 = 180, padded to 192
        assert_eq!(d, 352 - 192);
    }
}
