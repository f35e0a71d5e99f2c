//! `shrink bench`: speed measured against this machine's own matmul rate, in one run.
use crate::{progress, read_text};
use anyhow::Result;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use serde_json::json;
use shrink_eval::{peak_rss_mb, perplexity, PplOptions};
use shrink_model::{ModelConfig, ModelSource};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model to benchmark (Hugging Face directory or .gguf).
    #[arg(long, short, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Text to evaluate on.
    #[arg(long, short, default_value = "data/eval.txt")]
    text: PathBuf,
    /// Tokens of the text to evaluate (whole windows).
    #[arg(long, default_value_t = 8192)]
    max_tokens: usize,
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Also benchmark a GPTQ W4 g64 compression (no output written): wall time per phase and the
    /// Hessian and solve phases in GFLOP/s against the matmul rate.
    #[arg(long)]
    compress: bool,
    /// Calibration text for --compress.
    #[arg(long, default_value = "data/calib.txt")]
    calib: PathBuf,
    /// Calibration samples of 512 tokens for --compress.
    #[arg(long, default_value_t = 16)]
    nsamples: usize,
    /// Also time each compression method end to end (a `shrink compress` child process per
    /// method on the same calibration tokens, output discarded): wall time and peak RSS, as
    /// ratios against RTN measured in the same run. Comma-separated names from: rtn, gptq,
    /// magnitude, wanda, sparsegpt, sparsegpt-w4, wanda-gptq-w4 (or "all").
    #[arg(long, value_name = "LIST")]
    methods: Option<String>,
    /// Layers compressed per method for --methods (all by default).
    #[arg(long)]
    layers: Option<usize>,
    /// Write the JSON here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Best-of-`reps` f32 matmul rate in GFLOP/s for `[m,k] x [k,n]` with faer on all threads.
pub fn matmul_gflops(m: usize, k: usize, n: usize, reps: usize) -> f64 {
    let a = Mat::<f32>::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f32 * 0.1);
    let b = Mat::<f32>::from_fn(k, n, |i, j| ((i * 5 + j) % 13) as f32 * 0.1);
    let mut c = Mat::<f32>::zeros(m, n);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        matmul(
            c.as_mut(),
            Accum::Replace,
            a.as_ref(),
            b.as_ref(),
            1.0,
            Par::rayon(0),
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// FLOPs of one forward pass per token at window length `seq`: every linear and the output head
/// (2 per multiply-add), plus causal attention (QK^T and PV over on average (seq+1)/2 keys).
pub fn flops_per_token(c: &ModelConfig, seq: usize) -> f64 {
    let (h, q, kv, i) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    let linear = (h * q + 2 * h * kv + q * h + 3 * h * i) as f64;
    let attn = 2.0 * (c.num_heads * c.head_dim) as f64 * (seq as f64 + 1.0) / 2.0;
    2.0 * (linear + attn) * c.num_layers as f64 + 2.0 * (c.vocab_size * h) as f64
}

pub fn run(a: BenchArgs, quiet: bool) -> Result<()> {
    let square = matmul_gflops(1024, 1024, 1024, 5);
    let mlp_shape = matmul_gflops(2048, 576, 1536, 5);
    let backends = bench_backends(
        &[(512, 576, 1536), (512, 1536, 576), (512, 576, 576)],
        512,
        5,
    );
    let t0 = Instant::now();
    let src = ModelSource::open(&a.model)?;
    let mut model = src.load_all()?;
    let load_s = t0.elapsed().as_secs_f64();
    let text = read_text(&a.text)?;
    let t1 = Instant::now();
    let (ids, bos) = shrink_eval::eval_tokens(&src.tokenizer, &text)?;
    let tokenize_s = t1.elapsed().as_secs_f64();
    let opts = PplOptions {
        seqlen: a.seqlen,
        max_tokens: Some(a.max_tokens),
        batch: a.batch,
        bos,
    };
    let bar = progress::bar((a.max_tokens / a.seqlen) as u64, "windows", quiet);
    let r = perplexity(&mut model, &ids, &opts, &mut |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    let fpt = flops_per_token(&src.config, a.seqlen);
    let fwd_gflops = fpt * r.tokens as f64 / r.seconds / 1e9;
    let matmul_rate = square.max(mlp_shape);
    let compress = if a.compress {
        Some(bench_compress(&src, &a, matmul_rate, quiet)?)
    } else {
        None
    };
    let methods = match &a.methods {
        Some(list) => Some(bench_methods(&a, list)?),
        None => None,
    };
    let v = json!({
        "machine": {"threads": rayon::current_num_threads()},
        "matmul_gflops_f32": {"1024x1024x1024": square, "2048x576x1536": mlp_shape, "best": matmul_rate},
        "matmul_backends_gflops": backends,
        "model": a.model, "text": a.text,
        "load_seconds": load_s,
        "tokenize": {"chars": text.len(), "tokens": ids.len(), "seconds": tokenize_s, "tokens_per_second": ids.len() as f64 / tokenize_s},
        "eval": {"perplexity": r.perplexity, "tokens": r.tokens, "seqlen": r.seqlen, "batch": a.batch, "seconds": r.seconds, "tokens_per_second": r.tokens_per_second},
        "forward": {"gflop_per_token": fpt / 1e9, "gflops": fwd_gflops, "ratio_to_matmul": fwd_gflops / matmul_rate},
        "peak_rss_mb": peak_rss_mb(),
        "compress": compress,
        "methods": methods,
    });
    let s = serde_json::to_string_pretty(&v)?;
    match &a.out {
        Some(p) => {
            shrink_formats::write_atomic(p, (s + "\n").as_bytes())?;
            eprintln!("wrote {}", p.display());
        }
        None => println!("{s}"),
    }
    Ok(())
}

/// FLOPs of the Hessians of one layer for `rows` calibration rows: a symmetric rank-k update
/// computes d(d+1)/2 entries with 2 flops per row each, ~rows * d^2 per group.
fn hessian_flops(c: &ModelConfig, rows: usize) -> f64 {
    let (h, q, i) = (
        c.hidden_size as f64,
        (c.num_heads * c.head_dim) as f64,
        c.intermediate_size as f64,
    );
    rows as f64 * (2.0 * h * h + q * q + i * i)
}

/// FLOPs of GPTQ on one layer: per linear, the factorization and inverse (~d_in^3 in total, the
/// Hessian being shared by the group, counted once per group) and the updates (2 d_out d_in^2).
fn gptq_flops(c: &ModelConfig) -> f64 {
    let lay = shrink_model::arch::layer_layout(c, 0);
    let mut f = 0.0;
    for g in &lay.groups {
        let d_in = lay.linears[g.linears[0]].shape[1] as f64;
        f += d_in.powi(3);
        for &k in &g.linears {
            f += 2.0 * lay.linears[k].shape[0] as f64 * d_in * d_in;
        }
    }
    f
}

fn bench_compress(
    src: &ModelSource,
    a: &BenchArgs,
    matmul_rate: f64,
    quiet: bool,
) -> Result<serde_json::Value> {
    use shrink_methods::{ActOrder, Gptq, GptqConfig, QuantConfig};
    let source = shrink_calib::TextSource::from_path(&a.calib, None)?;
    let calib = shrink_calib::CalibSet::sample(&source, &src.tokenizer, a.nsamples, 512, 0)?;
    let quant = QuantConfig {
        bits: 4,
        group_size: Some(64),
        sym: false,
        mse: false,
        ggml: None,
        format: Default::default(),
    };
    let method = Gptq(GptqConfig {
        quant,
        block_size: 128,
        damp: 0.01,
        act_order: ActOrder::Static,
        static_groups: false,
    });
    let n = src.config.num_layers;
    let bar = progress::bar(n as u64, "layers", quiet);
    let t = Instant::now();
    let r = shrink_pipeline::run(
        src,
        &calib,
        &method,
        0..n,
        &mut shrink_pipeline::Discard,
        &mut |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    let wall = t.elapsed().as_secs_f64();
    let rows = calib.nsamples * calib.seqlen;
    let hf = hessian_flops(&src.config, rows) * n as f64;
    let sf = gptq_flops(&src.config) * n as f64;
    let ff = (flops_per_token(&src.config, 512)
        - 2.0 * (src.config.vocab_size * src.config.hidden_size) as f64)
        * rows as f64;
    let p = &r.phases;
    Ok(json!({
        "method": "gptq w4 g64 asym actorder=static", "nsamples": calib.nsamples, "seqlen": calib.seqlen,
        "wall_seconds": wall, "phases": p,
        "forward_gflops": ff / p.forward / 1e9, "forward_ratio_to_matmul": ff / p.forward / 1e9 / matmul_rate,
        "hessian_gflops": hf / p.hessian / 1e9, "hessian_ratio_to_matmul": hf / p.hessian / 1e9 / matmul_rate,
        "solve_gflops": sf / p.solve / 1e9, "solve_ratio_to_matmul": sf / p.solve / 1e9 / matmul_rate,
        "peak_rss_mb": peak_rss_mb(),
    }))
}

/// The `shrink compress` flags of each benchmarked method.
const BENCH_METHODS: [(&str, &str); 7] = [
    ("rtn", "--method rtn --bits 4 --group-size 64"),
    ("gptq", "--method gptq --bits 4 --group-size 64"),
    ("magnitude", "--method magnitude --sparsity 0.5"),
    ("wanda", "--method wanda --sparsity 0.5"),
    ("sparsegpt", "--method sparsegpt --sparsity 0.5"),
    (
        "sparsegpt-w4",
        "--method sparsegpt --sparsity 0.5 --bits 4 --group-size 64",
    ),
    (
        "wanda-gptq-w4",
        "--method wanda --sparsity 0.5 --bits 4 --group-size 64",
    ),
];

/// Runs `shrink compress` once per method (RTN first, the baseline) on the same calibration
/// tokens, and reports wall time, pipeline phases and peak RSS with ratios against RTN.
fn bench_methods(a: &BenchArgs, list: &str) -> Result<serde_json::Value> {
    use anyhow::{bail, Context};
    let mut names: Vec<&str> = if list == "all" {
        BENCH_METHODS.iter().map(|(n, _)| *n).collect()
    } else {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    };
    for n in &names {
        if !BENCH_METHODS.iter().any(|(m, _)| m == n) {
            let known: Vec<&str> = BENCH_METHODS.iter().map(|(m, _)| *m).collect();
            bail!(
                "--methods: unknown method '{n}' (known: {})",
                known.join(", ")
            );
        }
    }
    names.retain(|n| *n != "rtn");
    names.insert(0, "rtn");
    let exe = std::env::current_exe().context("cannot locate the shrink binary")?;
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let ids = tmp.path().join("ids.safetensors");
    {
        let src = ModelSource::open(&a.model)?;
        let source = shrink_calib::TextSource::from_path(&a.calib, None)?;
        shrink_calib::CalibSet::sample(&source, &src.tokenizer, a.nsamples, 512, 0)?.save(&ids)?;
    }
    let mut rows = vec![];
    let mut base: Option<(f64, f64)> = None;
    for name in names {
        let flags = BENCH_METHODS.iter().find(|(m, _)| *m == name).unwrap().1;
        let out = tmp.path().join(name);
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["compress", "-q", "--model"])
            .arg(&a.model)
            .args(flags.split(' '))
            .arg("--calib-ids")
            .arg(&ids)
            .arg("--out")
            .arg(&out);
        if let Some(l) = a.layers {
            cmd.args(["--layers", &l.to_string()]);
        }
        let t = Instant::now();
        let st = cmd.status().context("cannot run shrink compress")?;
        let wall = t.elapsed().as_secs_f64();
        if !st.success() {
            bail!("shrink compress for '{name}' failed ({st})");
        }
        let rep: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
        let tot = &rep["totals"];
        let rss = tot["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        let pipe = tot["pipeline_seconds"].as_f64().unwrap_or(f64::NAN);
        let (bw, br) = *base.get_or_insert((wall, rss));
        rows.push(json!({
            "name": name, "flags": flags, "method": rep["method"],
            "wall_seconds": wall, "pipeline_seconds": pipe, "phases": tot["phases"],
            "peak_rss_mb": rss,
            "wall_ratio_to_rtn": wall / bw, "rss_ratio_to_rtn": rss / br,
        }));
        std::fs::remove_dir_all(&out).ok();
    }
    Ok(json!({"nsamples": a.nsamples, "seqlen": 512, "layers": a.layers, "runs": rows}))
}

/// Best-of-`reps` seconds of `f`.
fn best_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Matmul rates (GFLOP/s) for the calibration forward's shapes (`tokens` x d_in -> d_out, as
/// `X W^T`) and the Hessian (`X^T X` over `tokens` rows): faer f32 (today's path), MKL sgemm f32
/// and MKL bf16 inputs with f32 accumulation (`cblas_gemm_bf16bf16f32`) where MKL loads; each
/// with its ratio to the best rate of its shape.
pub fn bench_backends(
    shapes: &[(usize, usize, usize)],
    tokens: usize,
    reps: usize,
) -> serde_json::Value {
    let mkl = shrink_model::gemm::mkl();
    let (avx512_bf16, amx_bf16) = shrink_model::gemm::cpu_bf16();
    let mut rows = Vec::new();
    let mut run_shape = |name: String, m: usize, n: usize, k: usize, hessian: bool| {
        let flops = 2.0 * (m * n * k) as f64;
        // forward: X[m,k] W[n,k]^T; Hessian: X[k,m]^T X[k,n] with m == n.
        let x = Mat::<f32>::from_fn(
            if hessian { k } else { m },
            if hessian { m } else { k },
            |i, j| ((i * 7 + j * 3) % 11) as f32 * 0.1 - 0.5,
        );
        let w = Mat::<f32>::from_fn(
            if hessian { k } else { n },
            if hessian { n } else { k },
            |i, j| ((i * 5 + j) % 13) as f32 * 0.1 - 0.6,
        );
        let mut c = Mat::<f32>::zeros(m, n);
        let faer_s = best_secs(reps, || {
            let (lhs, rhs) = if hessian {
                (x.transpose(), w.as_ref())
            } else {
                (x.as_ref(), w.transpose())
            };
            matmul(c.as_mut(), Accum::Replace, lhs, rhs, 1.0, Par::rayon(0));
        });
        let mut r = serde_json::Map::new();
        r.insert("shape".into(), json!(name));
        r.insert("faer_f32".into(), json!(flops / faer_s / 1e9));
        if let Some(mkl) = mkl {
            // row-major copies: x as [rows, cols], w likewise.
            let row_major = |a: &Mat<f32>| -> Vec<f32> {
                let mut v = Vec::with_capacity(a.nrows() * a.ncols());
                for i in 0..a.nrows() {
                    for j in 0..a.ncols() {
                        v.push(a[(i, j)]);
                    }
                }
                v
            };
            let (xr, wr) = (row_major(&x), row_major(&w));
            let (xb, wb) = (
                shrink_model::gemm::to_bf16(&xr),
                shrink_model::gemm::to_bf16(&wr),
            );
            let mut cr = vec![0f32; m * n];
            let s_s = if hessian {
                None
            } else {
                Some(best_secs(reps, || {
                    mkl.sgemm(m, n, k, &xr, &wr, true, &mut cr)
                }))
            };
            let b_s = best_secs(reps, || {
                mkl.gemm_bf16(m, n, k, &xb, hessian, &wb, !hessian, 0.0, &mut cr)
            });
            if let Some(s) = s_s {
                r.insert("mkl_sgemm_f32".into(), json!(flops / s / 1e9));
            }
            r.insert("mkl_bf16".into(), json!(flops / b_s / 1e9));
        }
        let best = r.values().filter_map(|v| v.as_f64()).fold(0.0f64, f64::max);
        let ratios: serde_json::Map<_, _> = r
            .iter()
            .filter_map(|(k, v)| v.as_f64().map(|g| (k.clone(), json!(g / best))))
            .collect();
        r.insert("ratio_to_best".into(), json!(ratios));
        rows.push(serde_json::Value::Object(r));
    };
    for &(m, k, n) in shapes {
        run_shape(format!("{m}x{k}->{n}"), m, n, k, false);
    }
    let d = shapes.first().map(|s| s.1).unwrap_or(576);
    run_shape(format!("hessian X^T X {tokens}x{d}"), d, d, tokens, true);
    json!({
        "cpu": {"avx512_bf16": avx512_bf16, "amx_bf16": amx_bf16},
        "mkl": mkl.map(|m| m.path.clone()),
        "mkl_note": if mkl.is_none() { Some("oneMKL not found (scripts/fetch-mkl, or SHRINK_MKL=path): f32 faer only") } else { None },
        "shapes": rows,
    })
}
