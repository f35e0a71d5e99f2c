//! Malformed models from strangers: every case is a distinct broken safetensors file, sharded
//! index, config.json, tokenizer.json or GGUF file, fed to `shrink eval` (which opens the model,
//! builds the tokenizer and loads every tensor). Each must end with exit code 1 and one error that
//! names the file and the problem: no panic, no hang (timeout), no huge allocation (the process
//! runs under an address-space limit, so an allocation driven by a declared length aborts it).
//!
//! The table of cases and messages is printed (run with `--nocapture`) and written to the file
//! named by `SHRINK_BAD_INPUT_TABLE` when it is set:
//!
//! ```text
//! SHRINK_BAD_INPUT_TABLE=out/reliab/bad_inputs.md cargo test --release -p shrink-cli --test badinput -- --nocapture
//! ```
mod common;
use common::*;
use serde_json::{json, Value};
use shrink_model::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Address-space limit for each run (KiB). The tiny model needs far less; a declared length of
/// 2^40 bytes or more would abort the process instead of giving exit code 1.
const VM_LIMIT_KB: u64 = 2 << 20;
/// Wall-clock limit for each run: a loop driven by a declared count would exceed it.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `shrink eval` on `model` under the limits; returns (exit code, stderr, seconds).
fn eval_limited(model: &Path, text: &Path) -> (i32, String, f64) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {VM_LIMIT_KB}; exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_shrink"))
        .args(["eval", "-q", "--seqlen", "16", "--model"])
        .arg(model)
        .arg("--text")
        .arg(text)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        if t0.elapsed() > TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            break -2;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code, err, t0.elapsed().as_secs_f64())
}

/// One malformed input: where it lives, the file the message must name, and words it must contain.
struct Case {
    format: &'static str,
    what: &'static str,
    model: PathBuf,
    file: &'static str,
    needles: &'static [&'static str],
}

struct Cases {
    dir: PathBuf,
    hf: PathBuf,
    gguf: PathBuf,
    list: Vec<Case>,
}

fn st_split(b: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&b[8..8 + n]).unwrap(),
        b[8 + n..].to_vec(),
    )
}

fn st_join(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn find(b: &[u8], needle: &[u8]) -> usize {
    b.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

type GgufTensor = (String, Vec<u64>, GgmlType, Vec<u8>);

impl Cases {
    fn push(
        &mut self,
        format: &'static str,
        what: &'static str,
        model: PathBuf,
        file: &'static str,
        needles: &'static [&'static str],
    ) {
        self.list.push(Case {
            format,
            what,
            model,
            file,
            needles,
        });
    }

    /// The file the last case's message must name, where it is not the edited one.
    fn names(&mut self, file: &'static str) {
        self.list.last_mut().unwrap().file = file;
    }

    /// A copy of the good HF directory, edited by `edit`.
    fn hf(&self, edit: impl FnOnce(&Path)) -> PathBuf {
        let d = self.dir.join(format!("hf{}", self.list.len()));
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(self.hf.join(f), d.join(f)).unwrap();
        }
        edit(&d);
        d
    }

    /// A safetensors case: `edit` gets the file's bytes and returns the new ones.
    fn st(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) {
        let d = self.hf(|d| {
            let p = d.join("model.safetensors");
            let b = edit(std::fs::read(&p).unwrap());
            std::fs::write(&p, b).unwrap();
        });
        self.push("safetensors", what, d, "model.safetensors", needles);
    }

    /// A safetensors case that edits the parsed header (data unchanged).
    fn st_header(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(&mut Value),
    ) {
        self.st(what, needles, |b| {
            let (mut h, data) = st_split(&b);
            edit(&mut h);
            st_join(h.to_string().as_bytes(), &data)
        });
    }

    /// A config.json case that edits the parsed config.
    fn config(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(&mut Value),
    ) {
        let d = self.hf(|d| {
            let p = d.join("config.json");
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            edit(&mut v);
            std::fs::write(&p, v.to_string()).unwrap();
        });
        self.push("config.json", what, d, "config.json", needles);
    }

    fn config_text(&mut self, what: &'static str, needles: &'static [&'static str], text: &str) {
        let d = self.hf(|d| std::fs::write(d.join("config.json"), text).unwrap());
        self.push("config.json", what, d, "config.json", needles);
    }

    fn tokenizer(&mut self, what: &'static str, needles: &'static [&'static str], text: &str) {
        let d = self.hf(|d| std::fs::write(d.join("tokenizer.json"), text).unwrap());
        self.push("tokenizer.json", what, d, "tokenizer.json", needles);
    }

    /// A sharded directory: the good model split in two shards plus an index, edited by `edit`.
    fn sharded(
        &mut self,
        what: &'static str,
        file: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(&Path, &mut Value),
    ) {
        let d = self.hf(|d| {
            let b = std::fs::read(d.join("model.safetensors")).unwrap();
            std::fs::remove_file(d.join("model.safetensors")).unwrap();
            let (h, data) = st_split(&b);
            let mut shards = [serde_json::Map::new(), serde_json::Map::new()];
            let mut bytes = [Vec::new(), Vec::new()];
            let mut map = serde_json::Map::new();
            for (k, v) in h.as_object().unwrap() {
                if k == "__metadata__" {
                    continue;
                }
                let s = usize::from(!k.starts_with("model.layers.0."));
                let (a, e) = (
                    v["data_offsets"][0].as_u64().unwrap() as usize,
                    v["data_offsets"][1].as_u64().unwrap() as usize,
                );
                let start = bytes[s].len();
                bytes[s].extend(&data[a..e]);
                let mut v = v.clone();
                v["data_offsets"] = json!([start, bytes[s].len()]);
                shards[s].insert(k.clone(), v);
                map.insert(
                    k.clone(),
                    json!(format!("model-0000{}-of-00002.safetensors", s + 1)),
                );
            }
            for s in 0..2 {
                let h = Value::Object(shards[s].clone()).to_string();
                let p = d.join(format!("model-0000{}-of-00002.safetensors", s + 1));
                std::fs::write(p, st_join(h.as_bytes(), &bytes[s])).unwrap();
            }
            let mut index = json!({"metadata": {}, "weight_map": map});
            edit(d, &mut index);
            let p = d.join("model.safetensors.index.json");
            if !p.exists() {
                std::fs::write(p, index.to_string()).unwrap();
            }
        });
        self.push("sharded", what, d, file, needles);
    }

    /// A GGUF case: `edit` gets the good file's bytes and returns the new ones.
    fn gguf(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) {
        let p = self.dir.join(format!("g{}.gguf", self.list.len()));
        std::fs::write(&p, edit(std::fs::read(&self.gguf).unwrap())).unwrap();
        self.push("GGUF", what, p, ".gguf", needles);
    }

    /// A GGUF case rebuilt with the writer after editing its metadata and tensors; `patch` then
    /// edits the bytes (for what the writer refuses to write).
    fn gguf_rebuilt(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(&mut Vec<(String, GgufValue)>, &mut Vec<GgufTensor>),
        patch: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) {
        let f = GgufFile::open(&self.gguf).unwrap();
        let mut meta = f.metadata().to_vec();
        let mut tensors: Vec<GgufTensor> = f
            .tensors()
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dims.clone(),
                    t.dtype,
                    f.tensor_data(t).to_vec(),
                )
            })
            .collect();
        edit(&mut meta, &mut tensors);
        let mut w = GgufWriter::new();
        for (k, v) in meta {
            w.add_metadata(k, v);
        }
        for (n, d, ty, b) in tensors {
            w.add_tensor(n, d, ty, b).unwrap();
        }
        let bytes = w.to_bytes().unwrap();
        self.gguf(what, needles, |_| patch(bytes));
    }

    /// A GGUF case that overwrites fields of tensor `name`'s info entry: `(offset after the name,
    /// value, width in bytes)`.
    fn gguf_info(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        name: &str,
        patches: &[(usize, u64, usize)],
    ) {
        self.gguf(what, needles, |mut b| {
            let at = tensor_info(&b, name);
            for &(off, v, w) in patches {
                b[at + off..at + off + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            b
        });
    }

    /// A GGUF case that edits one tensor (name, dims, type, bytes), named by `needles[0]`.
    fn gguf_tensor(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(&mut GgufTensor),
    ) {
        let name = needles[0];
        self.gguf_rebuilt(
            what,
            needles,
            |_, t| edit(t.iter_mut().find(|x| x.0 == name).unwrap()),
            |b| b,
        );
    }

    fn gguf_meta(
        &mut self,
        what: &'static str,
        needles: &'static [&'static str],
        edit: impl FnOnce(&mut Vec<(String, GgufValue)>),
    ) {
        self.gguf_rebuilt(what, needles, |m, _| edit(m), |b| b);
    }
}

fn set(meta: &mut Vec<(String, GgufValue)>, key: &str, v: GgufValue) {
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => meta.push((key.to_string(), v)),
    }
}

fn tensor_mut<'a>(h: &'a mut Value, name: &str) -> &'a mut Value {
    &mut h[name]
}

/// Offset of the tensor-info entry of `name` (just after its name) in a GGUF file.
fn tensor_info(b: &[u8], name: &str) -> usize {
    find(b, name.as_bytes()) + name.len()
}

fn all_cases(t: &Path) -> Cases {
    let hf = hf_dir(t);
    let gguf = gguf_file(t);
    let mut c = Cases {
        dir: t.join("cases"),
        hf,
        gguf,
        list: vec![],
    };
    const NORM: &str = "model.norm.weight";
    const EMB: &str = "model.embed_tokens.weight";

    // ---- safetensors
    c.st("empty file", &["too short"], |_| vec![]);
    c.st("5 bytes", &["too short", "5 bytes"], |_| {
        vec![1, 2, 3, 4, 5]
    });
    c.st(
        "header length 2^40",
        &["header length 1099511627776"],
        |mut b| {
            put_u64(&mut b, 0, 1 << 40);
            b
        },
    );
    c.st(
        "header length u64::MAX",
        &["header length 18446744073709551615"],
        |mut b| {
            put_u64(&mut b, 0, u64::MAX);
            b
        },
    );
    c.st(
        "header length = file length",
        &["header length", "exceeds"],
        |mut b| {
            let n = b.len() as u64;
            put_u64(&mut b, 0, n);
            b
        },
    );
    c.st("header not UTF-8", &["not UTF-8"], |mut b| {
        b[12] = 0xff;
        b
    });
    c.st("header not JSON", &["not valid JSON"], |mut b| {
        b[8] = b'[';
        b
    });
    c.st("header is a JSON array", &["not a JSON object"], |b| {
        let (_, data) = st_split(&b);
        st_join(b"[1, 2, 3]", &data)
    });
    c.st("duplicate tensor name", &[NORM, "twice"], |b| {
        let (h, data) = st_split(&b);
        let text = h.to_string();
        let dup = format!("{{\"{NORM}\":{},{}", h[NORM], &text[1..]);
        st_join(dup.as_bytes(), &data)
    });
    c.st_header(
        "tensor entry not an object",
        &[NORM, "not an object"],
        |h| h[NORM] = json!(42),
    );
    c.st_header("missing dtype", &[NORM, "no 'dtype'"], |h| {
        tensor_mut(h, NORM).as_object_mut().unwrap().remove("dtype");
    });
    c.st_header(
        "unknown dtype F128",
        &[NORM, "unknown dtype", "F128"],
        |h| h[NORM]["dtype"] = json!("F128"),
    );
    c.st_header(
        "unsupported dtype I32",
        &[NORM, "I32", "F32, F16 and BF16"],
        |h| h[NORM]["dtype"] = json!("I32"),
    );
    c.st_header("negative dimension", &[NORM, "shape [-64]"], |h| {
        h[NORM]["shape"] = json!([-64])
    });
    c.st_header("shape product overflows", &[EMB, "overflows"], |h| {
        h[EMB]["shape"] = json!([1u64 << 32, 1u64 << 32, 1u64 << 32])
    });
    c.st_header(
        "shape of 2^40 elements",
        &[EMB, "needs 4398046511104 bytes"],
        |h| h[EMB]["shape"] = json!([1u64 << 20, 1u64 << 20]),
    );
    c.st_header(
        "data_offsets end before begin",
        &[NORM, "end before they begin"],
        |h| {
            let e = h[NORM]["data_offsets"][1].clone();
            let b = h[NORM]["data_offsets"][0].clone();
            h[NORM]["data_offsets"] = json!([e, b]);
        },
    );
    c.st_header(
        "data_offsets past end of file",
        &[NORM, "past the end"],
        |h| h[NORM]["data_offsets"][1] = json!(u64::MAX),
    );
    c.st_header("data_offsets not integers", &[NORM, "data_offsets"], |h| {
        h[NORM]["data_offsets"] = json!(["0", 256])
    });
    c.st_header(
        "size disagrees with dtype x shape",
        &[NORM, "needs 128 bytes"],
        |h| h[NORM]["dtype"] = json!("F16"),
    );
    c.st_header(
        "two tensors overlap",
        &["overlap", "model.layers.1.self_attn.v_proj.weight"],
        |h| {
            let b = h[NORM]["data_offsets"][0].as_u64().unwrap();
            h[NORM]["data_offsets"] = json!([b - 128, b + 128]);
        },
    );
    c.st_header(
        "hole between tensors",
        &["unused bytes", "model.layers.0.input_layernorm.weight"],
        |h| {
            let k = "model.layers.0.input_layernorm.weight";
            let (b, e) = (
                h[k]["data_offsets"][0].as_u64().unwrap(),
                h[k]["data_offsets"][1].as_u64().unwrap(),
            );
            h[k]["data_offsets"] = json!([b + 128, e]);
            h[k]["shape"] = json!([32]);
        },
    );
    c.st(
        "trailing bytes after the last tensor",
        &["trailing", NORM],
        |mut b| {
            b.extend([0u8; 64]);
            b
        },
    );
    c.st("file cut in half", &["past the end"], |b| {
        b[..b.len() / 2].to_vec()
    });
    c.st_header("__metadata__ not strings", &["__metadata__"], |h| {
        h["__metadata__"] = json!({"format": 1})
    });
    c.st_header("0-d tensor where a matrix belongs", &[EMB, "shape", "[128, 64]"], |h| {
        let b = h[EMB]["data_offsets"][0].as_u64().unwrap();
        h[EMB]["data_offsets"] = json!([b, b + 4]);
        h[EMB]["shape"] = json!([]);
        // the rest of the embedding's bytes become a hole: name it as the problem instead
        let e = h["model.layers.0.input_layernorm.weight"]["data_offsets"][0].clone();
        h["__pad"] = json!({"dtype": "U8", "shape": [e.as_u64().unwrap() - b - 4], "data_offsets": [b + 4, e]});
    });
    c.st("NaN in a weight", &[NORM, "non-finite"], |mut b| {
        let n = b.len();
        b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        b
    });
    c.st("Inf in a weight", &[NORM, "non-finite"], |mut b| {
        let n = b.len();
        b[n - 4..].copy_from_slice(&f32::INFINITY.to_le_bytes());
        b
    });

    // ---- sharded directories
    c.sharded(
        "index names a missing shard",
        "model-00002-of-00002.safetensors",
        &["cannot open", "index.json"],
        |d, _| std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap(),
    );
    c.sharded(
        "index not JSON",
        "model.safetensors.index.json",
        &["not valid JSON"],
        |d, _| std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": ").unwrap(),
    );
    c.sharded(
        "index without weight_map",
        "model.safetensors.index.json",
        &["weight_map"],
        |_, v| {
            v.as_object_mut().unwrap().remove("weight_map");
        },
    );
    c.sharded(
        "index with empty weight_map",
        "model.safetensors.index.json",
        &["weight_map", "empty"],
        |_, v| v["weight_map"] = json!({}),
    );
    c.sharded(
        "index path traversal",
        "model.safetensors.index.json",
        &["not a plain file name", "../"],
        |_, v| v["weight_map"][NORM] = json!("../../etc/passwd"),
    );
    c.sharded(
        "index puts a tensor in the wrong shard",
        "model.safetensors.index.json",
        &[NORM, "model-00001-of-00002.safetensors", "it is in"],
        |_, v| v["weight_map"][NORM] = json!("model-00001-of-00002.safetensors"),
    );
    c.sharded(
        "same tensor in two shards",
        "model-00002-of-00002.safetensors",
        &["also appears in", "model.layers.0.input_layernorm.weight"],
        |d, _| {
            // shard 2 gets shard 1's first tensor as well
            let p1 = d.join("model-00001-of-00002.safetensors");
            let p2 = d.join("model-00002-of-00002.safetensors");
            let (h1, d1) = st_split(&std::fs::read(p1).unwrap());
            let (mut h2, mut d2) = st_split(&std::fs::read(&p2).unwrap());
            let k = "model.layers.0.input_layernorm.weight";
            let (a, e) = (
                h1[k]["data_offsets"][0].as_u64().unwrap() as usize,
                h1[k]["data_offsets"][1].as_u64().unwrap() as usize,
            );
            let start = d2.len();
            d2.extend(&d1[a..e]);
            h2[k] = json!({"dtype": "F32", "shape": [64], "data_offsets": [start, d2.len()]});
            std::fs::write(p2, st_join(h2.to_string().as_bytes(), &d2)).unwrap();
        },
    );

    // ---- config.json
    c.config_text("not JSON", &["not valid JSON"], "{\"hidden_size\": 64,");
    c.config_text("a JSON array", &["expected a JSON object"], "[1, 2]");
    c.config_text(
        "nested 100000 deep",
        &["not valid JSON", "recursion"],
        &"[".repeat(100_000),
    );
    c.config("missing hidden_size", &["hidden_size", "missing"], |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    c.config(
        "hidden_size is a string",
        &["hidden_size", "non-negative integer"],
        |v| v["hidden_size"] = json!("64"),
    );
    c.config("hidden_size negative", &["hidden_size", "-64"], |v| {
        v["hidden_size"] = json!(-64)
    });
    c.config(
        "hidden_size 2^40",
        &["hidden_size", "implausibly large"],
        |v| v["hidden_size"] = json!(1u64 << 40),
    );
    c.config("num_attention_heads 0", &["num_attention_heads"], |v| {
        v["num_attention_heads"] = json!(0)
    });
    c.config(
        "heads not a multiple of kv heads",
        &["not a multiple of num_key_value_heads"],
        |v| v["num_key_value_heads"] = json!(3),
    );
    c.config(
        "hidden_size not divisible by heads",
        &["not divisible"],
        |v| {
            v.as_object_mut().unwrap().remove("head_dim");
            v["num_attention_heads"] = json!(6);
            v["num_key_value_heads"] = json!(6);
        },
    );
    c.config("odd head_dim", &["head_dim 15", "even"], |v| {
        v["head_dim"] = json!(15)
    });
    c.config("rms_norm_eps negative", &["rms_norm_eps"], |v| {
        v["rms_norm_eps"] = json!(-1e-5)
    });
    c.config("rope_theta 0", &["rope_theta"], |v| {
        v["rope_theta"] = json!(0.0)
    });
    c.config(
        "unknown rope scaling type",
        &["rope scaling type 'yarn2'"],
        |v| v["rope_scaling"]["rope_type"] = json!("yarn2"),
    );
    c.config("llama3 rope scaling without factor", &["'factor'"], |v| {
        v["rope_scaling"].as_object_mut().unwrap().remove("factor");
    });
    c.config(
        "rope scaling factor negative",
        &["'factor'", "positive"],
        |v| v["rope_scaling"]["factor"] = json!(-8.0),
    );
    c.config(
        "llama3 low_freq_factor = high_freq_factor",
        &["high_freq_factor", "low_freq_factor"],
        |v| v["rope_scaling"]["high_freq_factor"] = json!(1.0),
    );
    c.config(
        "longrope without long_factor",
        &["rope scaling 'longrope'", "'long_factor'"],
        |v| {
            v["rope_scaling"] = json!({"rope_type": "longrope", "short_factor": vec![1.0; 8],
                                       "original_max_position_embeddings": 16})
        },
    );
    c.config(
        "longrope long_factor of the wrong length",
        &["'long_factor' has 7 entries", "rotary dimension 16", "needs 8"],
        |v| {
            v["rope_scaling"] = json!({"rope_type": "longrope", "short_factor": vec![1.0; 8],
                                       "long_factor": vec![2.0; 7], "original_max_position_embeddings": 16})
        },
    );
    c.config(
        "unknown model_type",
        &["unknown architecture", "gpt_neox"],
        |v| v["model_type"] = json!("gpt_neox"),
    );
    c.config(
        "no model_type, unknown architectures",
        &["no 'model_type'", "BertModel"],
        |v| {
            v.as_object_mut().unwrap().remove("model_type");
            v["architectures"] = json!(["BertModel"]);
        },
    );
    c.config("hidden_act gelu", &["hidden_act 'gelu'"], |v| {
        v["hidden_act"] = json!("gelu")
    });
    c.config(
        "tie_word_embeddings a string",
        &["tie_word_embeddings", "true or false"],
        |v| v["tie_word_embeddings"] = json!("yes"),
    );
    c.config(
        "bos_token_id past u32",
        &["bos_token_id", "not a token id"],
        |v| v["bos_token_id"] = json!(1u64 << 33),
    );
    c.config(
        "intermediate_size contradicts the tensors",
        &["gate_proj.weight", "shape", "model config implies"],
        |v| v["intermediate_size"] = json!(96),
    );
    c.names("model.safetensors");
    c.config(
        "num_hidden_layers 2^24 (allowed) in a 2-layer file",
        &[
            "declares 16777216 layers",
            "model.layers.2.self_attn.q_proj.weight",
        ],
        |v| v["num_hidden_layers"] = json!(1 << 24),
    );
    c.names("model.safetensors");
    c.config(
        "head_dim 2^20 (allowed) contradicting the tensors",
        &["q_proj.weight", "model config implies [4194304, 64]"],
        |v| v["head_dim"] = json!(1 << 20),
    );
    c.names("model.safetensors");
    c.config(
        "more layers than the file has",
        &["model.layers.2.", "missing"],
        |v| v["num_hidden_layers"] = json!(3),
    );
    c.names("model.safetensors");
    c.config(
        "vocab_size smaller than the embedding",
        &["model.embed_tokens.weight", "[100, 64]"],
        |v| v["vocab_size"] = json!(100),
    );
    c.names("model.safetensors");

    // ---- tokenizer.json
    c.tokenizer("not JSON", &["not valid JSON"], "{\"model\": ");
    c.tokenizer("a JSON array", &["not a valid tokenizer.json"], "[]");
    let tok: Value = serde_json::from_str(&tokenizer_json(128)).unwrap();
    let mut t1 = tok.clone();
    t1["model"]["merges"] = json!([["zz", "qq"]]);
    c.tokenizer(
        "merge of unknown tokens",
        &["not a valid tokenizer.json"],
        &t1.to_string(),
    );
    let mut t2 = tok.clone();
    t2["model"]["vocab"] = json!({});
    c.tokenizer("empty vocabulary", &["empty vocabulary"], &t2.to_string());
    let mut t3 = tok.clone();
    t3["pre_tokenizer"] = json!({"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false});
    c.tokenizer(
        "invalid pre-tokenizer regex",
        &["not a valid tokenizer.json"],
        &t3.to_string(),
    );
    let mut t4 = tok.clone();
    t4["model"]["type"] = json!("NoSuchModel");
    c.tokenizer(
        "unknown model type",
        &["not a valid tokenizer.json"],
        &t4.to_string(),
    );
    let mut t5 = tok.clone();
    t5["decoder"] = json!("DECODER");
    let t5 = t5.to_string().replace(
        "\"DECODER\"",
        "{\"type\": \"ByteLevel\" \"trim_offsets\": true}",
    );
    c.tokenizer(
        "syntax error inside the decoder (panicked in tokenizers 0.23)",
        &["not valid JSON", "expected `,` or `}`"],
        &t5,
    );
    let mut t6 = tok.clone();
    t6["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"});
    c.tokenizer(
        "Precompiled normalizer with a bad charsmap (panicked in tokenizers 0.23)",
        &["not a valid tokenizer.json", "Precompiled"],
        &t6.to_string(),
    );
    c.tokenizer(
        "too many tokens for the model",
        &["vocab_size 128"],
        &tokenizer_json(200),
    );

    // ---- GGUF
    c.gguf("empty file", &["too short"], |_| vec![]);
    c.gguf("bad magic", &["not a GGUF file"], |mut b| {
        b[3] = b'X';
        b
    });
    c.gguf("version 99", &["unsupported GGUF version 99"], |mut b| {
        put_u32(&mut b, 4, 99);
        b
    });
    c.gguf("big-endian file", &["big-endian"], |mut b| {
        put_u32(&mut b, 4, 3u32.swap_bytes());
        b
    });
    c.gguf(
        "tensor count 2^40",
        &["tensor count 1099511627776"],
        |mut b| {
            put_u64(&mut b, 8, 1 << 40);
            b
        },
    );
    c.gguf(
        "metadata count 2^60",
        &["metadata count 1152921504606846976"],
        |mut b| {
            put_u64(&mut b, 16, 1 << 60);
            b
        },
    );
    c.gguf(
        "key length 2^60",
        &["metadata key #0", "length 1152921504606846976"],
        |mut b| {
            put_u64(&mut b, 24, 1 << 60);
            b
        },
    );
    c.gguf(
        "string value length 2^60",
        &["general.architecture", "length 1152921504606846976"],
        |mut b| {
            let at = find(&b, b"general.architecture") + 20 + 4;
            put_u64(&mut b, at, 1 << 60);
            b
        },
    );
    c.gguf(
        "array length 2^60",
        &["tokenizer.ggml.tokens", "1152921504606846976"],
        |mut b| {
            let at = find(&b, b"tokenizer.ggml.tokens") + 21 + 4 + 4;
            put_u64(&mut b, at, 1 << 60);
            b
        },
    );
    c.gguf(
        "unknown value type 99",
        &["general.architecture", "unknown value type id 99"],
        |mut b| {
            let at = find(&b, b"general.architecture") + 20;
            put_u32(&mut b, at, 99);
            b
        },
    );
    c.gguf(
        "array of unknown type",
        &["tokenizer.ggml.tokens", "unknown value type id 77"],
        |mut b| {
            let at = find(&b, b"tokenizer.ggml.tokens") + 21 + 4;
            put_u32(&mut b, at, 77);
            b
        },
    );
    c.gguf(
        "key not UTF-8",
        &["metadata key #0", "not valid UTF-8"],
        |mut b| {
            b[33] = 0xff;
            b
        },
    );
    c.gguf_rebuilt(
        "invalid bool",
        &["tokenizer.ggml.add_bos_token", "invalid bool value 7"],
        |m, _| set(m, "tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
        |mut b| {
            let at = find(&b, b"tokenizer.ggml.add_bos_token") + 28 + 4;
            b[at] = 7;
            b
        },
    );
    c.gguf_rebuilt(
        "alignment 3",
        &["general.alignment", "power of two"],
        |m, _| set(m, "general.alignmenX", GgufValue::U32(3)),
        |mut b| {
            let at = find(&b, b"general.alignmenX");
            b[at + 16] = b't';
            b
        },
    );
    c.gguf_rebuilt(
        "duplicate metadata key",
        &["duplicate metadata key 'general.architecture'"],
        |m, _| set(m, "general.architecturX", GgufValue::String("llama".into())),
        |mut b| {
            let at = find(&b, b"general.architecturX");
            b[at + 19] = b'e';
            b
        },
    );
    c.gguf_meta(
        "rope attn_factor without LongRoPE tensors",
        &[
            "llama.rope.scaling.attn_factor",
            "without the LongRoPE tensors",
        ],
        |m| set(m, "llama.rope.scaling.attn_factor", GgufValue::F32(1.2)),
    );
    c.gguf_rebuilt(
        "rope_factors_long without rope_factors_short",
        &[
            "rope_factors_long.weight",
            "not 'rope_factors_short.weight'",
            "needs both",
        ],
        |_, t| {
            t.push((
                "rope_factors_long.weight".into(),
                vec![8],
                GgmlType::F32,
                [2f32; 8].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ))
        },
        |b| b,
    );
    c.gguf_rebuilt(
        "rope_factors_short of the wrong length",
        &["rope_factors_short.weight", "holds 7 factors", "needs 8"],
        |_, t| {
            for (name, n) in [
                ("rope_factors_long.weight", 8),
                ("rope_factors_short.weight", 7),
            ] {
                t.push((
                    name.into(),
                    vec![n as u64],
                    GgmlType::F32,
                    vec![1f32; n].iter().flat_map(|x| x.to_le_bytes()).collect(),
                ))
            }
        },
        |b| b,
    );
    c.gguf_rebuilt(
        "duplicate tensor name",
        &["duplicate tensor name 'output_norm.weight'"],
        |_, t| {
            t.push((
                "output_norm.weighX".into(),
                vec![1],
                GgmlType::F32,
                vec![0; 4],
            ))
        },
        |mut b| {
            let at = find(&b, b"output_norm.weighX");
            b[at + 17] = b't';
            b
        },
    );
    c.gguf_info(
        "tensor with 5 dimensions",
        &["token_embd.weight", "5 dimensions"],
        "token_embd.weight",
        &[(0, 5, 4)],
    );
    c.gguf_info(
        "zero-sized dimension",
        &["token_embd.weight", "zero-sized dimension"],
        "token_embd.weight",
        &[(4, 0, 8)],
    );
    c.gguf_info(
        "dims product overflows",
        &["token_embd.weight", "overflows"],
        "token_embd.weight",
        &[(4, 1 << 62, 8), (12, 1 << 62, 8)],
    );
    c.gguf_info(
        "unknown ggml type 99",
        &["token_embd.weight", "unknown ggml type id 99"],
        "token_embd.weight",
        &[(20, 99, 4)],
    );
    c.gguf_info(
        "misaligned data offset",
        &["token_embd.weight", "misaligned"],
        "token_embd.weight",
        &[(24, 1, 8)],
    );
    c.gguf_info(
        "data offset 2^60",
        &["token_embd.weight", "past the end"],
        "token_embd.weight",
        &[(24, 1 << 60, 8)],
    );
    c.gguf_info(
        "overlapping tensors",
        &["overlap", "output_norm.weight"],
        "output_norm.weight",
        &[(16, 0, 8)],
    );
    c.gguf("last 100 bytes cut", &["truncated"], |b| {
        b[..b.len() - 100].to_vec()
    });
    c.gguf("cut inside the metadata", &["truncated"], |b| {
        b[..200].to_vec()
    });
    c.gguf_meta(
        "missing block_count",
        &["llama.block_count", "missing"],
        |m| m.retain(|(k, _)| k != "llama.block_count"),
    );
    c.gguf_meta(
        "embedding_length is a string",
        &["llama.embedding_length", "expected an integer"],
        |m| set(m, "llama.embedding_length", GgufValue::String("64".into())),
    );
    c.gguf_meta(
        "block_count 2^40",
        &["num_hidden_layers", "implausibly large"],
        |m| set(m, "llama.block_count", GgufValue::U64(1 << 40)),
    );
    c.gguf_meta(
        "block_count 2^24 (allowed) in a 2-layer file",
        &["declares 16777216 layers", "blk.2.attn_q.weight", "missing"],
        |m| set(m, "llama.block_count", GgufValue::U32(1 << 24)),
    );
    c.gguf_meta(
        "head_count 0",
        &["num_attention_heads must be positive"],
        |m| set(m, "llama.attention.head_count", GgufValue::U32(0)),
    );
    c.gguf_meta(
        "unknown architecture",
        &["unknown architecture 'falcon'"],
        |m| {
            set(
                m,
                "general.architecture",
                GgufValue::String("falcon".into()),
            )
        },
    );
    c.gguf_meta("rope scaling yarn", &["rope scaling type 'yarn'"], |m| {
        set(
            m,
            "llama.rope.scaling.type",
            GgufValue::String("yarn".into()),
        )
    });
    c.gguf_meta(
        "sentencepiece tokenizer over a byte-level vocabulary (no byte-fallback tokens)",
        &["cannot spell", "U+2581", "<0xE2>"],
        |m| set(m, "tokenizer.ggml.model", GgufValue::String("llama".into())),
    );
    c.gguf_meta(
        "unknown tokenizer model",
        &["tokenizer.ggml.model 'bert'", "not supported"],
        |m| set(m, "tokenizer.ggml.model", GgufValue::String("bert".into())),
    );
    c.gguf_meta(
        "token_type length mismatch",
        &["token_type has 3 entries"],
        |m| {
            set(
                m,
                "tokenizer.ggml.token_type",
                GgufValue::Array(vec![GgufValue::I32(1); 3]),
            )
        },
    );
    c.gguf_meta(
        "tokens are integers",
        &["tokenizer.ggml.tokens", "expected an array of string"],
        |m| {
            set(
                m,
                "tokenizer.ggml.tokens",
                GgufValue::Array(vec![GgufValue::I32(1); 128]),
            )
        },
    );
    c.gguf_meta(
        "malformed merge",
        &["tokenizer.ggml.merges[0]", "two tokens"],
        |m| {
            set(
                m,
                "tokenizer.ggml.merges",
                GgufValue::Array(vec![GgufValue::String("a b c".into())]),
            )
        },
    );
    c.gguf_tensor(
        "0-d attention weight in layer 1 (panicked before)",
        &["blk.1.attn_q.weight", "2-D"],
        |q| {
            q.1 = vec![];
            q.3 = vec![0; 4];
        },
    );
    c.gguf_tensor(
        "1-D attention weight in layer 1",
        &["blk.1.attn_q.weight", "2-D"],
        |q| {
            q.1 = vec![64 * 64];
        },
    );
    c.gguf_tensor(
        "weight of the wrong shape",
        &["blk.0.ffn_up.weight", "shape", "model config implies"],
        |q| {
            q.1 = vec![160, 64];
        },
    );
    c.gguf_tensor(
        "NaN in a weight",
        &["output_norm.weight", "non-finite"],
        |o| {
            o.3[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        },
    );
    c.gguf(
        "missing tensor (name changed)",
        &["output_norm.weight", "missing"],
        |mut b| {
            let at = find(&b, b"output_norm.weight");
            b[at] = b'X';
            b
        },
    );
    c
}

/// First line of the error, with the temporary directory shortened for the table.
fn message(err: &str, tmp: &Path) -> String {
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or(err)
        .trim_start_matches("error: ");
    line.replace(&format!("{}/", tmp.display()), "")
        .replace('|', "\\|")
}

#[test]
fn every_malformed_input_gets_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let text = t.join("t.txt");
    std::fs::write(&text, "some text to evaluate on, long enough. ".repeat(10)).unwrap();
    let cases = all_cases(t);
    // The good inputs the cases are made from do load.
    let (code, err, _) = eval_limited(&cases.hf, &text);
    assert_eq!(code, 0, "good HF directory: {err}");
    let (code, err, _) = eval_limited(&cases.gguf, &text);
    assert_eq!(code, 0, "good GGUF: {err}");

    let mut table = String::from(
        "| # | format | malformed input | shrink's error (exit code 1) |\n|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    let mut slowest = 0f64;
    for (i, c) in cases.list.iter().enumerate() {
        let (code, err, secs) = eval_limited(&c.model, &text);
        slowest = slowest.max(secs);
        let msg = message(&err, t);
        let mut problems = Vec::new();
        if code != 1 {
            problems.push(format!("exit code {code}"));
        }
        if err.contains("panicked") || err.contains("memory allocation") {
            problems.push("panic or allocation failure".into());
        }
        if err.lines().filter(|l| l.starts_with("error: ")).count() != 1 {
            problems.push("not exactly one error line".into());
        }
        if !msg.contains(c.file) {
            problems.push(format!("does not name {}", c.file));
        }
        for n in c.needles {
            if !msg.contains(n) {
                problems.push(format!("lacks {n:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} / {}: {}\n  stderr: {err}",
                c.format,
                c.what,
                problems.join(", ")
            ));
        }
        table.push_str(&format!(
            "| {} | {} | {} | `{}` |\n",
            i + 1,
            c.format,
            c.what,
            msg
        ));
    }
    println!("{table}");
    println!(
        "{} malformed inputs, slowest {slowest:.2} s",
        cases.list.len()
    );
    if let Some(p) = std::env::var_os("SHRINK_BAD_INPUT_TABLE") {
        // relative to the workspace root (tests run in the crate's directory)
        std::fs::write(root().join(p), &table).unwrap();
    }
    assert!(cases.list.len() >= 30);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
