//! `eval --precision bf16` (oneMKL, bf16 inputs, f32 accumulation) against the f32 path on the
//! default model: perplexity over 2 windows within 0.1%, and `--precision f32` bit-identical to
//! the default. Skipped with a message without the fetched model or oneMKL (scripts/fetch-mkl).
mod common;
use std::process::Command;

fn ppl(model: &str, text: &str, precision: &str) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args([
            "--quiet",
            "eval",
            "-m",
            model,
            "-t",
            text,
            "--max-tokens",
            "1024",
        ])
        .args(["--precision", precision])
        .env("SHRINK_MKL", common::root().join("third_party/mkl/lib"))
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{all}");
    let line = all
        .lines()
        .find(|l| l.starts_with("perplexity "))
        .unwrap_or_else(|| panic!("{all}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn bf16_perplexity_within_0_1_percent_of_f32() {
    let (Some(model), Some(text)) = (
        common::fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        common::fetched("data/eval.txt"),
    ) else {
        return;
    };
    let lib = common::root().join("third_party/mkl/lib/libmkl_rt.so.2");
    if !lib.is_file() && std::env::var_os("SHRINK_MKL").is_none() {
        eprintln!("SKIPPED: oneMKL not found (scripts/fetch-mkl)");
        return;
    }
    let (m, t) = (common::s(&model), common::s(&text));
    let f32_ = ppl(m, t, "f32");
    let bf16 = ppl(m, t, "bf16");
    let rel = (bf16 - f32_).abs() / f32_;
    eprintln!("perplexity f32 {f32_} bf16 {bf16} relative {rel:.2e}");
    assert!(
        rel < 1e-3,
        "bf16 perplexity {bf16} vs f32 {f32_}: {rel:.2e}"
    );
    assert!(rel > 0.0, "bf16 path did not run (identical perplexity)");
}
