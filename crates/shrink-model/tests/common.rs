//! Shared helpers for integration tests.
#![allow(dead_code)]
use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file fetched by scripts/fetch. Absent locally: the test is skipped with a note; absent under
/// CI (which runs scripts/fetch first): the test fails.
pub fn fetched(rel: &str) -> Option<PathBuf> {
    let p = root().join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing under CI: .ci/run must run scripts/fetch first",
            p.display()
        );
    }
    eprintln!("SKIPPED: {} is absent (run scripts/fetch)", p.display());
    None
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// Reads a tensor of a safetensors fixture as f64 values (from F32 or I64).
pub fn st_read(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{}: no tensor {name}", path.display()));
    let d = t.data();
    let v: Vec<f64> = match t.dtype() {
        safetensors::Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::I64 => d
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        dt => panic!("unexpected dtype {dt:?}"),
    };
    (t.shape().to_vec(), v)
}
