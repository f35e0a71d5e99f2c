//! A streaming safetensors writer: the header is computed from dtypes and shapes, then each tensor
//! is produced and written one at a time, so a model larger than memory can be written.
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use shrink_model::Tensor;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

/// The element types shrink writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    U8,
    I8,
    /// FP8 E4M3 (`float8_e4m3fn`)
    F8E4M3,
    I32,
    I64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::F8E4M3 => 1,
            DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }
    fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E4M3 => "F8_E4M3",
            DType::I32 => "I32",
            DType::I64 => "I64",
        }
    }
}

/// One entry of a file: name, element type, shape.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes tensors given as raw little-endian bytes to `path` (via `path.part` and a rename).
/// `entries` fixes the order and the header; `load(i)` produces the bytes of entry `i`.
pub fn write_safetensors_raw(
    path: &Path,
    entries: &[Entry],
    metadata: &BTreeMap<String, String>,
    load: &mut dyn FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    write_safetensors_with(path, entries, metadata, &mut |i, w| {
        let b = load(i)?;
        w.write_all(&b)?;
        Ok(b.len())
    })
}

/// As [`write_safetensors_raw`], but `write(i, w)` writes tensor `i`'s bytes into `w` itself
/// and returns how many it wrote (checked against the entry), so that no tensor needs a second,
/// byte-sized copy in memory.
pub fn write_safetensors_with(
    path: &Path,
    entries: &[Entry],
    metadata: &BTreeMap<String, String>,
    write: &mut dyn FnMut(usize, &mut dyn Write) -> Result<usize>,
) -> Result<()> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for e in entries {
        let end = offset + e.dtype.size() * e.shape.iter().product::<usize>();
        header.insert(
            e.name.clone(),
            json!({"dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut hbytes = Value::Object(header).to_string().into_bytes();
    while hbytes.len() % 8 != 0 {
        hbytes.push(b' ');
    }
    let tmp = path.with_extension("safetensors.part");
    let result = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 22, f);
        w.write_all(&(hbytes.len() as u64).to_le_bytes())?;
        w.write_all(&hbytes)?;
        for (i, e) in entries.iter().enumerate() {
            let n = write(i, &mut w).with_context(|| format!("{}: write failed", tmp.display()))?;
            let want = e.dtype.size() * e.shape.iter().product::<usize>();
            if n != want {
                bail!(
                    "tensor '{}' has {n} bytes, expected {want} for {:?} {:?}",
                    e.name,
                    e.dtype,
                    e.shape
                );
            }
        }
        let f = w
            .into_inner()
            .map_err(|e| anyhow::anyhow!("{}: write failed: {}", tmp.display(), e.error()))?;
        f.sync_all()
            .with_context(|| format!("{}: sync failed", tmp.display()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", path.display())));
    }
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}", tmp.display(), path.display())
    })?;
    Ok(())
}

/// Writes f32 tensors; `load(i)` produces tensor `i`, which must have the listed shape.
pub fn write_safetensors(
    path: &Path,
    names_shapes: &[(String, Vec<usize>)],
    metadata: &BTreeMap<String, String>,
    load: &mut dyn FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let entries: Vec<Entry> = names_shapes
        .iter()
        .map(|(n, s)| Entry {
            name: n.clone(),
            dtype: DType::F32,
            shape: s.clone(),
        })
        .collect();
    write_safetensors_with(path, &entries, metadata, &mut |i, w| {
        let t = load(i)?;
        if t.shape != names_shapes[i].1 {
            bail!(
                "tensor '{}' has shape {:?}, expected {:?}",
                names_shapes[i].0,
                t.shape,
                names_shapes[i].1
            );
        }
        // in pieces: the tensor is never held twice
        for c in t.data.chunks(1 << 16) {
            w.write_all(&f32_bytes(c))?;
        }
        Ok(4 * t.data.len())
    })
}
