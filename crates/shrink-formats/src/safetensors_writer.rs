//! A streaming safetensors writer: the header is computed from the shapes, then each tensor is
//! produced and written one at a time, so a model larger than memory can be written.
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use shrink_model::Tensor;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes f32 tensors to `path` (via `path.part` and a rename). `names_shapes` fixes the order and
/// the header; `load(i)` produces tensor `i` when it is written.
pub fn write_safetensors(
    path: &Path,
    names_shapes: &[(String, Vec<usize>)],
    metadata: &BTreeMap<String, String>,
    load: &mut dyn FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for (name, shape) in names_shapes {
        let n: usize = shape.iter().product();
        let end = offset + 4 * n;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
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
        for (i, (name, shape)) in names_shapes.iter().enumerate() {
            let t = load(i)?;
            if &t.shape != shape {
                bail!(
                    "tensor '{name}' has shape {:?}, expected {:?}",
                    t.shape,
                    shape
                );
            }
            let mut buf = Vec::with_capacity(t.data.len() * 4);
            for v in &t.data {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&buf)
                .with_context(|| format!("{}: write failed", tmp.display()))?;
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
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
