//! Mutation fuzzing of the model readers: safetensors, GGUF, config.json and tokenizer.json.
//!
//! Inputs start from the seed corpus in `tests/fuzz_corpus/<target>/` (small valid models, plus
//! every input that once crashed a reader), are mutated with a seeded generator (bit flips,
//! interesting integers written over length and count fields, truncation, insertion, splicing,
//! and structural edits of the JSON) and fed to the same code `shrink eval` runs: open the model,
//! build its tokenizer, load and check every tensor and run a forward pass. Each input must give
//! `Ok` or an `Err` - never a panic, never a single allocation above [`MAX_ALLOC`], never an input
//! that takes longer than [`HANG_SECS`] (the watchdog aborts the run and keeps the input).
//!
//! CI runs a short budget with a fixed seed; a longer run:
//!
//! ```text
//! SHRINK_FUZZ_SECS=1800 SHRINK_FUZZ_SEED=7 nice cargo test --release -p shrink-cli --test fuzz -- --nocapture
//! ```
//!
//! (`SHRINK_FUZZ_SECS` is the total budget, split over the four targets.) Failing inputs are
//! written to `SHRINK_FUZZ_CRASH_DIR` (default: a `shrink-fuzz-crashes` folder in the temp dir);
//! once fixed, copy them into the corpus so they are replayed on every run.
mod common;
use common::*;
use serde_json::{json, Value};
use shrink_calib::SplitMix64;
use shrink_model::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use shrink_model::{ModelConfig, ModelSource};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest single allocation allowed while reading an input (the seeds are a few tens of KB).
const MAX_ALLOC: usize = 16 << 20;
/// An input that takes longer than this is a hang.
const HANG_SECS: u64 = 20;

/// The system allocator, recording the largest request since the last reset.
struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LARGEST.fetch_max(n, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}
#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// The value of environment variable `key`, or `default` when unset or unparsable.
fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

fn crash_dir() -> PathBuf {
    std::env::var_os("SHRINK_FUZZ_CRASH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("shrink-fuzz-crashes"))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Safetensors,
    Gguf,
    Config,
    Tokenizer,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::Safetensors,
        Target::Gguf,
        Target::Config,
        Target::Tokenizer,
    ];
    fn dir(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::Gguf => "gguf",
            Target::Config => "config",
            Target::Tokenizer => "tokenizer",
        }
    }
}

/// Runs the readers on `bytes` as a file of `target`'s kind in `work` (which holds a valid micro
/// model: config.json, model.safetensors, tokenizer.json).
fn exec(target: Target, bytes: &[u8], work: &Path) -> anyhow::Result<()> {
    let forward = |src: &ModelSource| -> anyhow::Result<()> {
        let mut m = src.load_all()?;
        let h = m.hidden_states(&[1, 2, 3], 1, 3)?;
        m.logits(&h, 3);
        Ok(())
    };
    match target {
        Target::Safetensors => {
            let p = work.join("fuzz.safetensors");
            std::fs::write(&p, bytes)?;
            let st = shrink_model::source::SafetensorsSource::open(&p)?;
            let names: Vec<String> = st.names().map(String::from).collect();
            for n in names {
                shrink_model::TensorSource::load(&st, &n)?;
            }
            Ok(())
        }
        Target::Gguf => {
            let p = work.join("fuzz.gguf");
            std::fs::write(&p, bytes)?;
            if let Ok(f) = shrink_model::gguf::GgufFile::open(&p) {
                for t in f.tensors() {
                    let _ = f.dequantize(&t.name);
                }
            }
            let src = ModelSource::open(&p)?;
            shrink_model::tokenizer::encode(&src.tokenizer, "Hello world, 123 tokens!")?;
            forward(&src)
        }
        Target::Config | Target::Tokenizer => {
            let d = work.join("model");
            let name = if target == Target::Config {
                "config.json"
            } else {
                "tokenizer.json"
            };
            std::fs::write(d.join(name), bytes)?;
            let r = ModelSource::open(&d).and_then(|src| {
                shrink_model::tokenizer::encode(&src.tokenizer, "Hello world, 123 tokens!")?;
                forward(&src)
            });
            std::fs::copy(work.join(name), d.join(name))?;
            r
        }
    }
}

const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    7,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 60,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// A position, favouring the start of the input (where the headers are).
fn pos(r: &mut SplitMix64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let span = 1usize << r.below(usize::BITS as u64 - len.leading_zeros() as u64 + 1);
    r.below(span.min(len) as u64) as usize
}

fn mutate_bytes(r: &mut SplitMix64, b: &mut Vec<u8>, other: &[u8]) {
    let len = b.len();
    match r.below(9) {
        0 if len > 0 => {
            let p = pos(r, len);
            b[p] ^= 1 << r.below(8);
        }
        1 if len > 0 => {
            let p = pos(r, len);
            b[p] = [0, 0xff, 0x7f, 0x80, 1, b'"', b'[', b'{'][r.below(8) as usize];
        }
        2 | 3 => {
            let v = INTERESTING[r.below(INTERESTING.len() as u64) as usize];
            let w = [1usize, 2, 4, 8][r.below(4) as usize];
            let p = pos(r, len.saturating_sub(w));
            if p + w <= len {
                b[p..p + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
        }
        4 => b.truncate(pos(r, len + 1)),
        5 => {
            let p = pos(r, len + 1);
            let n = r.below(16) as usize;
            let ins: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
            b.splice(p..p, ins);
        }
        6 if len > 0 => {
            let p = pos(r, len);
            let n = (r.below(64) as usize).min(len - p);
            b.drain(p..p + n);
        }
        7 if len > 0 => {
            let p = pos(r, len);
            let n = (r.below(64) as usize).min(len - p);
            let chunk = b[p..p + n].to_vec();
            let q = pos(r, len);
            b.splice(q..q, chunk);
        }
        _ if !other.is_empty() => {
            // splice: the start of this input, the rest of another
            let p = pos(r, len);
            let q = pos(r, other.len());
            b.truncate(p);
            b.extend_from_slice(&other[q..]);
        }
        _ => {}
    }
}

fn interesting_json(r: &mut SplitMix64) -> Value {
    match r.below(16) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1u64 << 32),
        3 => json!(1u64 << 62),
        4 => json!(u64::MAX),
        5 => json!(1e308),
        6 => json!(-0.5),
        7 => json!(""),
        8 => json!("F16"),
        9 => Value::Null,
        10 => json!(true),
        11 => json!([]),
        12 => json!({}),
        13 => json!([0, 1 << 20]),
        14 => json!([[[[1]]]]),
        _ => json!(r.below(300)),
    }
}

/// Pointers (RFC 6901) to every node of `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                )
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out)
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A structural edit of a JSON document: replace, remove, or copy a node, or add a field.
fn mutate_json(r: &mut SplitMix64, v: &mut Value) {
    let mut ptrs = Vec::new();
    pointers(v, String::new(), &mut ptrs);
    let p = ptrs[r.below(ptrs.len() as u64) as usize].clone();
    let other = ptrs[r.below(ptrs.len() as u64) as usize].clone();
    let copy = v.pointer(&other).cloned().unwrap_or(Value::Null);
    match r.below(5) {
        0 | 1 => {
            if let Some(x) = v.pointer_mut(&p) {
                *x = interesting_json(r);
            }
        }
        2 => {
            if let Some((parent, key)) = p.rsplit_once('/') {
                match v.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) if !a.is_empty() => {
                        a.remove(key.parse::<usize>().unwrap_or(0).min(a.len() - 1));
                    }
                    _ => {}
                }
            }
        }
        3 => {
            if let Some(x) = v.pointer_mut(&p) {
                *x = copy;
            }
        }
        _ => {
            if let Some(Value::Object(m)) = v.pointer_mut(&p) {
                let keys = [
                    "dtype",
                    "shape",
                    "data_offsets",
                    "head_dim",
                    "rope_scaling",
                    "vocab_size",
                    "sliding_window",
                    "use_sliding_window",
                    "num_key_value_heads",
                    "merges",
                ];
                m.insert(
                    keys[r.below(keys.len() as u64) as usize].into(),
                    interesting_json(r),
                );
            }
        }
    }
}

/// Splits a safetensors file into its header (when it parses) and data.
fn st_parts(b: &[u8]) -> Option<(Value, &[u8])> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let h = serde_json::from_slice(b.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((h, &b[8 + n..]))
}

type GgufParts = (
    Vec<(String, GgufValue)>,
    Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
);

/// The metadata and tensors of a GGUF file that parses (written to `work` to be opened).
fn gguf_parts(b: &[u8], work: &Path) -> Option<GgufParts> {
    let p = work.join("parse.gguf");
    std::fs::write(&p, b).ok()?;
    let f = GgufFile::open(&p).ok()?;
    let t = f.tensors().iter();
    let t = t.map(|t| {
        (
            t.name.clone(),
            t.dims.clone(),
            t.dtype,
            f.tensor_data(t).to_vec(),
        )
    });
    Some((f.metadata().to_vec(), t.collect()))
}

fn interesting_gguf(r: &mut SplitMix64) -> GgufValue {
    let n = INTERESTING[r.below(INTERESTING.len() as u64) as usize];
    let words = [
        "", " ", "a b", "llama", "gpt2", "qwen2", "linear", "<s>", "\u{0}", "Ġthe",
    ];
    let word = |r: &mut SplitMix64| words[r.below(words.len() as u64) as usize].to_string();
    match r.below(10) {
        0 => GgufValue::U32(n as u32),
        1 => GgufValue::U64(n),
        2 => GgufValue::I32(-(n as i32).abs() - 1),
        3 => GgufValue::F32([0.0, -1.0, f32::NAN, f32::INFINITY, 1e30, 1e-30][r.below(6) as usize]),
        4 => GgufValue::String(word(r)),
        5 => GgufValue::Bool(r.below(2) == 1),
        6 => GgufValue::Array(
            (0..r.below(300))
                .map(|_| GgufValue::String(word(r)))
                .collect(),
        ),
        7 => GgufValue::Array(
            (0..r.below(300))
                .map(|_| GgufValue::I32(r.below(6) as i32 - 1))
                .collect(),
        ),
        8 => GgufValue::Array(vec![]),
        _ => GgufValue::U32(r.below(300) as u32),
    }
}

/// A semantic edit of a GGUF file: a metadata value replaced, removed or added, or a tensor's
/// dims, type or name changed (then written back with the writer).
fn mutate_gguf(r: &mut SplitMix64, b: &[u8], work: &Path) -> Option<Vec<u8>> {
    let (mut meta, mut tensors) = gguf_parts(b, work)?;
    let keys = [
        "llama.attention.key_length",
        "llama.vocab_size",
        "llama.rope.scaling.type",
        "llama.rope.scaling.factor",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
        "general.alignment",
        "llama.context_length",
    ];
    match r.below(6) {
        0 | 1 if !meta.is_empty() => {
            let i = r.below(meta.len() as u64) as usize;
            meta[i].1 = interesting_gguf(r);
        }
        2 if !meta.is_empty() => {
            meta.remove(r.below(meta.len() as u64) as usize);
        }
        3 => {
            let k = keys[r.below(keys.len() as u64) as usize].to_string();
            meta.retain(|(x, _)| *x != k);
            meta.push((k, interesting_gguf(r)));
        }
        _ if !tensors.is_empty() => {
            let i = r.below(tensors.len() as u64) as usize;
            let names: Vec<String> = tensors.iter().map(|t| t.0.clone()).collect();
            let t = &mut tensors[i];
            match r.below(4) {
                0 => t.1.reverse(),
                1 => t.1 = vec![t.1.iter().product()],
                2 => t.0 = names[r.below(names.len() as u64) as usize].clone() + ".x",
                _ => {
                    let types: Vec<GgmlType> = GgmlType::ALL
                        .into_iter()
                        .filter(|ty| ty.can_dequantize() && ty.bytes_for(t.1[0]).is_some())
                        .collect();
                    if let Some(&ty) = types.get(r.below(types.len().max(1) as u64) as usize) {
                        let n = ty.bytes_for(t.1.iter().product())?;
                        t.2 = ty;
                        t.3 = (0..n).map(|_| r.next_u64() as u8).collect();
                    }
                }
            }
        }
        _ => {}
    }
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k, v);
    }
    for (n, d, ty, data) in tensors {
        w.add_tensor(n, d, ty, data).ok()?;
    }
    w.to_bytes().ok()
}

fn mutate(r: &mut SplitMix64, target: Target, seed: &[u8], other: &[u8], work: &Path) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + r.below(4) {
        let structural = r.below(10) < 6;
        match target {
            Target::Gguf if structural => {
                if let Some(m) = mutate_gguf(r, &b, work) {
                    b = m;
                    continue;
                }
            }
            Target::Config | Target::Tokenizer if structural => {
                if let Ok(mut v) = serde_json::from_slice::<Value>(&b) {
                    mutate_json(r, &mut v);
                    b = serde_json::to_vec(&v).unwrap();
                    continue;
                }
            }
            Target::Safetensors if structural => {
                if let Some((mut h, data)) = st_parts(&b) {
                    mutate_json(r, &mut h);
                    let data = data.to_vec();
                    let h = h.to_string();
                    b = (h.len() as u64).to_le_bytes().to_vec();
                    b.extend(h.as_bytes());
                    b.extend(data);
                    continue;
                }
            }
            _ => {}
        }
        mutate_bytes(r, &mut b, other);
    }
    b
}

fn read_corpus(t: Target) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir().join(t.dir()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds for {t:?}");
    v
}

/// The input being run and when it started (ms since the fuzzer began; 0: idle).
static CURRENT: Mutex<(Option<Target>, Vec<u8>)> = Mutex::new((None, Vec::new()));
static STARTED_MS: AtomicU64 = AtomicU64::new(0);

fn save_failure(t: Target, bytes: &[u8], why: &str) -> PathBuf {
    let d = crash_dir().join(t.dir());
    std::fs::create_dir_all(&d).unwrap();
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let p = d.join(format!("{why}-{h:016x}"));
    std::fs::write(&p, bytes).unwrap();
    p
}

struct Stats {
    execs: u64,
    errors: u64,
    failures: Vec<String>,
    slowest: f64,
    largest_alloc: usize,
}

fn fuzz_target(t: Target, budget: Duration, seed: u64, work: &Path, st: &mut Stats, t0: Instant) {
    let corpus = read_corpus(t);
    let max_alloc = env_or("SHRINK_FUZZ_MAX_ALLOC", MAX_ALLOC);
    let mut r = SplitMix64::new(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let start = Instant::now();
    let mut i = 0u64;
    // Every seed as it is, then mutants until the budget is spent.
    while i < corpus.len() as u64 || start.elapsed() < budget {
        let input = match corpus.get(i as usize) {
            Some((_, b)) => b.clone(),
            None => {
                let a = &corpus[r.below(corpus.len() as u64) as usize].1;
                let b = &corpus[r.below(corpus.len() as u64) as usize].1;
                mutate(&mut r, t, a, b, work)
            }
        };
        i += 1;
        *CURRENT.lock().unwrap() = (Some(t), input.clone());
        LARGEST.store(0, Ordering::Relaxed);
        let te = Instant::now();
        STARTED_MS.store(t0.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let res = std::panic::catch_unwind(|| exec(t, &input, work));
        STARTED_MS.store(0, Ordering::SeqCst);
        let secs = te.elapsed().as_secs_f64();
        st.slowest = st.slowest.max(secs);
        let largest = LARGEST.load(Ordering::Relaxed);
        st.largest_alloc = st.largest_alloc.max(largest);
        st.execs += 1;
        let mut detail = String::new();
        let fail = match res {
            Err(payload) => {
                detail = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some("panic")
            }
            Ok(_) if largest > max_alloc => Some("alloc"),
            Ok(Err(e)) => {
                st.errors += 1;
                let msg = format!("{e:#}");
                msg.is_empty().then_some("empty-error")
            }
            Ok(Ok(())) => None,
        };
        if let Some(why) = fail {
            let p = save_failure(t, &input, why);
            st.failures.push(format!(
                "{t:?}: {why} {detail} ({largest} bytes largest allocation), input saved to {}",
                p.display()
            ));
        }
    }
}

/// The seed corpus: a micro model (Llama, 1 layer, hidden 32, vocab 32) in every format, a
/// safetensors file of assorted dtypes and shapes, a GGUF file of every quantized type shrink
/// reads, and the tiny fixtures' configs. Regenerate (then commit) with
/// `cargo test --release -p shrink-cli --test fuzz -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let c = corpus_dir();
    for t in Target::ALL {
        std::fs::create_dir_all(c.join(t.dir())).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = micro_model(tmp.path());
    std::fs::copy(
        hf.join("model.safetensors"),
        c.join("safetensors/micro.safetensors"),
    )
    .unwrap();
    std::fs::copy(hf.join("config.json"), c.join("config/micro.json")).unwrap();
    std::fs::copy(hf.join("tokenizer.json"), c.join("tokenizer/micro.json")).unwrap();
    gguf_of(&hf, &c.join("gguf/micro.gguf"));
    for name in ["llama", "qwen2", "mistral"] {
        std::fs::copy(
            tiny(name).join("config.json"),
            c.join(format!("config/{name}.json")),
        )
        .unwrap();
    }
    // assorted dtypes and shapes (0-d, empty, 3-d)
    let mut r = SplitMix64::new(1);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, size) in [
        ("a.f16", "F16", vec![4, 2], 2),
        ("b.bf16", "BF16", vec![8], 2),
        ("c.scalar", "F32", vec![], 4),
        ("d.empty", "F32", vec![0, 4], 4),
        ("e.i64", "I64", vec![2], 8),
        ("f.cube", "F32", vec![2, 2, 2], 4),
    ] {
        let n: usize = shape.iter().product::<usize>() * size;
        let start = data.len();
        data.extend((0..n).map(|_| r.below(200) as u8));
        header.insert(
            name.into(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let h = Value::Object(header).to_string();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h.as_bytes());
    b.extend(data);
    std::fs::write(c.join("safetensors/dtypes.safetensors"), b).unwrap();
    // every type shrink dequantizes, one block row each (random bytes)
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    w.add_metadata("general.alignment", GgufValue::U32(64));
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_dequantize()) {
        let n = 256u64;
        let bytes = (0..ty.bytes_for(n).unwrap())
            .map(|_| r.below(256) as u8)
            .collect();
        w.add_tensor(format!("t.{}", ty.name()), vec![n], ty, bytes)
            .unwrap();
    }
    w.write(&c.join("gguf/quants.gguf")).unwrap();
}

/// A valid micro model directory: Llama, 1 layer, hidden 32, 2 heads of 16, 1 KV head,
/// intermediate 64, vocab 32, untied head; random weights.
fn micro_model(dir: &Path) -> PathBuf {
    let d = dir.join("micro");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": false, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(
        d.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let cfg = ModelConfig::from_hf_file(&d.join("config.json")).unwrap();
    let names: Vec<(String, Vec<usize>)> = shrink_model::arch::hf_tensor_names(&cfg)
        .into_iter()
        .map(|n| {
            let s = shrink_formats::hf::expected_shape(&cfg, &n).unwrap();
            (n, s)
        })
        .collect();
    let mut r = SplitMix64::new(2);
    shrink_formats::write_safetensors(
        &d.join("model.safetensors"),
        &names,
        &Default::default(),
        &mut |i| {
            let n: usize = names[i].1.iter().product();
            let v = (0..n)
                .map(|_| (r.below(2001) as f32 - 1000.0) / 10000.0)
                .collect();
            Ok(shrink_model::Tensor::new(names[i].1.clone(), v))
        },
    )
    .unwrap();
    std::fs::write(d.join("tokenizer.json"), tokenizer_json(32)).unwrap();
    d
}

#[test]
fn fuzz_readers() {
    let secs: f64 = env_or("SHRINK_FUZZ_SECS", 40.0);
    let seed: u64 = env_or("SHRINK_FUZZ_SEED", 1);
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    // the valid model the config and tokenizer targets complete
    let c = corpus_dir();
    std::fs::create_dir_all(work.join("model")).unwrap();
    for (from, to) in [
        ("config/micro.json", "config.json"),
        ("safetensors/micro.safetensors", "model.safetensors"),
        ("tokenizer/micro.json", "tokenizer.json"),
    ] {
        std::fs::copy(c.join(from), work.join(to)).unwrap();
        std::fs::copy(c.join(from), work.join("model").join(to)).unwrap();
    }
    // Warm-up: the matmul library allocates a 64 MiB scratch buffer per thread on first use,
    // whatever the input; it must not count against the first input that runs a forward pass.
    exec(
        Target::Config,
        &std::fs::read(work.join("config.json")).unwrap(),
        work,
    )
    .unwrap();
    let t0 = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = STARTED_MS.load(Ordering::SeqCst);
        if s != 0 && t0.elapsed().as_millis() as u64 > s + HANG_SECS * 1000 {
            if let Ok(cur) = CURRENT.try_lock() {
                if let Some(t) = cur.0 {
                    let p = save_failure(t, &cur.1, "hang");
                    eprintln!(
                        "HANG: an input ran for over {HANG_SECS} s; saved to {}",
                        p.display()
                    );
                }
            }
            std::process::abort();
        }
    });
    // quiet panics: they are caught, counted and saved
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for t in Target::ALL {
        let mut st = Stats {
            execs: 0,
            errors: 0,
            failures: vec![],
            slowest: 0.0,
            largest_alloc: 0,
        };
        let ts = Instant::now();
        fuzz_target(
            t,
            Duration::from_secs_f64(secs / 4.0),
            seed,
            work,
            &mut st,
            t0,
        );
        report.push(format!(
            "{:<12} {:>8} execs in {:>6.1} s, {:>8} errors, {:>8} ok, slowest {:.3} s, largest allocation {} KiB, {} failures",
            t.dir(),
            st.execs,
            ts.elapsed().as_secs_f64(),
            st.errors,
            st.execs - st.errors - st.failures.len() as u64,
            st.slowest,
            st.largest_alloc >> 10,
            st.failures.len()
        ));
        failures.extend(st.failures);
    }
    std::panic::set_hook(hook);
    println!("fuzz seed {seed}, budget {secs} s:\n{}", report.join("\n"));
    failures.dedup();
    assert!(
        failures.is_empty(),
        "{} failing inputs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
