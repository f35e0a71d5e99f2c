//! Where weights come from: a Hugging Face directory of safetensors files, or a GGUF file.
//!
//! Both are memory-mapped and read one tensor at a time, so a model is never read whole; callers
//! ask for tensors by their Hugging Face names (see `arch`) and get f32 data in Hugging Face layout.
use crate::arch::{self, Arch};
use crate::config::{ModelConfig, RopeScaling};
use crate::gguf::GgufFile;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A source of named tensors in Hugging Face naming and layout.
pub trait TensorSource: Send + Sync {
    /// Loads a tensor as f32; the error names the file and the tensor.
    fn load(&self, name: &str) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
    /// Where the tensors live, for messages.
    fn describe(&self) -> String;
    /// How a tensor is named in messages: `'name'`, plus the name in the file where it differs.
    fn label(&self, name: &str) -> String {
        format!("'{name}'")
    }
    /// A tensor's shape as stored (Hugging Face layout), without reading its data; `None` when
    /// absent or unknown without reading.
    fn shape(&self, _name: &str) -> Option<Vec<usize>> {
        None
    }
    /// Rows `rows` of a 2-D tensor `[n, d]`, as f32 `[rows.len(), d]`, in that order: an
    /// embedding lookup. Sources that can read rows alone (GGUF blocks, safetensors) do, so that
    /// the whole matrix is never held in f32; the default loads the tensor and gathers.
    fn load_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        gather_rows(&self.load(name)?, rows, &self.label(name))
    }
}

struct StFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

/// One or more safetensors files (sharded with `model.safetensors.index.json`, or a single file).
pub struct SafetensorsSource {
    files: Vec<StFile>,
    /// Tensor name -> index into `files`.
    index: BTreeMap<String, usize>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: the file is opened read-only; as with every mmap-based loader, the user must not
    // modify it while shrink runs.
    unsafe { Mmap::map(&f) }.with_context(|| format!("{}: cannot memory-map", path.display()))
}

/// Largest safetensors header accepted (the `safetensors` crate's limit).
const MAX_ST_HEADER: u64 = 100_000_000;

/// The keys of a JSON object, in file order and with repeats (serde_json's maps keep the last).
struct JsonKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for JsonKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<JsonKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(JsonKeys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// Checks a safetensors file's header before the `safetensors` crate reads it, so that every
/// malformed header gets a message naming the file, the tensor and the problem: header length,
/// UTF-8, JSON, duplicate names, dtypes, shapes (overflow included), offsets past the end of the
/// file, sizes that disagree with dtype x shape, overlaps, holes and trailing bytes. Nothing is
/// allocated from a declared length before it is checked against the file size.
fn check_safetensors_header(path: &Path, buf: &[u8]) -> Result<()> {
    let file = path.display();
    let len = buf.len() as u64;
    let Some(n) = buf.get(..8) else {
        bail!("{file}: file is too short ({len} bytes) to be safetensors (it starts with an 8-byte header length)");
    };
    let n = u64::from_le_bytes(n.try_into().unwrap());
    if n > len - 8 {
        bail!("{file}: header length {n} exceeds the {} bytes after it (file truncated or not safetensors)", len - 8);
    }
    if n > MAX_ST_HEADER {
        bail!("{file}: header length {n} exceeds the safetensors limit of {MAX_ST_HEADER} bytes");
    }
    let header = &buf[8..8 + n as usize];
    let text = std::str::from_utf8(header).map_err(|e| {
        anyhow::anyhow!(
            "{file}: header is not UTF-8 (invalid byte at file offset {})",
            8 + e.valid_up_to()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{file}: header is not valid JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        bail!("{file}: header is not a JSON object");
    };
    let keys: JsonKeys = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{file}: header is not valid JSON: {e}"))?;
    if keys.0.len() != obj.len() {
        let mut seen = std::collections::HashSet::new();
        let dup = keys.0.iter().find(|k| !seen.insert(*k)).unwrap();
        bail!("{file}: tensor '{dup}' appears twice in the header");
    }
    let data_len = len - 8 - n;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(obj.len());
    for (name, t) in obj {
        if name == "__metadata__" {
            if !t
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.is_string()))
            {
                bail!("{file}: '__metadata__' must be an object of strings, found {t}");
            }
            continue;
        }
        let what = |problem: String| anyhow::anyhow!("{file}: tensor '{name}': {problem}");
        let Some(t) = t.as_object() else {
            return Err(what(format!("header entry is not an object: {t}")));
        };
        let dtype = t.get("dtype").ok_or_else(|| what("no 'dtype'".into()))?;
        let dtype: Dtype = serde_json::from_value(dtype.clone())
            .map_err(|_| what(format!("unknown dtype {dtype}")))?;
        let shape = t.get("shape").ok_or_else(|| what("no 'shape'".into()))?;
        let dims: Vec<u64> = shape
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<_>>())
            .ok_or_else(|| {
                what(format!(
                    "shape {shape} is not a list of non-negative integers"
                ))
            })?;
        let offs = t
            .get("data_offsets")
            .ok_or_else(|| what("no 'data_offsets'".into()))?;
        let (begin, end) = match offs.as_array().map(|a| a.as_slice()) {
            Some([b, e]) => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) => (b, e),
                _ => {
                    return Err(what(format!(
                        "data_offsets {offs} are not two non-negative integers"
                    )))
                }
            },
            _ => {
                return Err(what(format!(
                    "data_offsets {offs} are not two non-negative integers"
                )))
            }
        };
        let bits = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize() as u64))
            .filter(|&b| b / 8 <= usize::MAX as u64 && dims.len() <= 64)
            .ok_or_else(|| {
                what(format!(
                    "shape {shape} of {dtype:?} overflows (too many elements or bytes)"
                ))
            })?;
        if bits % 8 != 0 {
            return Err(what(format!(
                "shape {shape} of {dtype:?} is not a whole number of bytes"
            )));
        }
        if end < begin {
            return Err(what(format!(
                "data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if end > data_len {
            return Err(what(format!("data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes after the header; file truncated or header corrupt)")));
        }
        if end - begin != bits / 8 {
            return Err(what(format!(
                "{dtype:?} shape {shape} needs {} bytes but data_offsets [{begin}, {end}] hold {}",
                bits / 8,
                end - begin
            )));
        }
        spans.push((begin, end, name));
    }
    spans.sort();
    let after = |prev: Option<&str>| {
        prev.map_or("the start of the data".to_string(), |p| {
            format!("tensor '{p}'")
        })
    };
    let (mut pos, mut prev) = (0u64, None);
    for &(b, e, name) in &spans {
        if b < pos {
            bail!("{file}: tensors '{}' (data bytes ..{pos}) and '{name}' (data bytes {b}..{e}) overlap", prev.unwrap_or(""));
        }
        if b > pos {
            bail!("{file}: {} unused bytes between {} and tensor '{name}' (data bytes {pos}..{b}); safetensors allows no holes", b - pos, after(prev));
        }
        (pos, prev) = (e, Some(name));
    }
    if pos != data_len {
        bail!("{file}: {} bytes of trailing data after {} (from file offset {}); safetensors allows none", data_len - pos, after(prev), 8 + n + pos);
    }
    Ok(())
}

impl SafetensorsSource {
    /// Opens a directory (`model.safetensors`, or the shards listed in `model.safetensors.index.json`,
    /// or every `*.safetensors`) or a single `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        let mut weight_map = None;
        let paths: Vec<PathBuf> = if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            let index = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            if index.is_file() {
                let text = std::fs::read_to_string(&index)
                    .with_context(|| format!("{}: cannot read", index.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", index.display()))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .with_context(|| format!("{}: missing object 'weight_map'", index.display()))?;
                if map.is_empty() {
                    bail!("{}: 'weight_map' is empty", index.display());
                }
                let mut files: Vec<String> = Vec::new();
                for (k, f) in map {
                    let f = f.as_str().with_context(|| {
                        format!("{}: weight_map['{k}'] is not a file name", index.display())
                    })?;
                    if f.contains('/') || f.contains('\\') || f.contains("..") {
                        bail!(
                            "{}: weight_map['{k}'] = '{f}' is not a plain file name",
                            index.display()
                        );
                    }
                    if !files.iter().any(|x| x == f) {
                        files.push(f.to_string());
                    }
                }
                files.sort();
                weight_map = Some((index, map.clone()));
                files.into_iter().map(|f| path.join(f)).collect()
            } else if single.is_file() {
                vec![single]
            } else {
                let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                    .with_context(|| format!("{}: cannot list directory", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                    .collect();
                v.sort();
                if v.is_empty() {
                    bail!("{}: no model.safetensors, no model.safetensors.index.json and no *.safetensors file", path.display());
                }
                v
            }
        };
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for p in paths {
            let mmap = match &weight_map {
                Some((index, _)) => map_file(&p)
                    .with_context(|| format!("a shard listed in {}", index.display()))?,
                None => map_file(&p)?,
            };
            check_safetensors_header(&p, &mmap)?;
            let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                anyhow::anyhow!(
                    "{}: invalid safetensors file ({} bytes): {e}",
                    p.display(),
                    mmap.len()
                )
            })?;
            let tensors: HashMap<String, _> = meta
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.clone()))
                .collect();
            for name in tensors.keys() {
                if let Some(prev) = index.insert(name.clone(), files.len()) {
                    let prev: &StFile = &files[prev];
                    bail!(
                        "{}: tensor '{name}' also appears in {}",
                        p.display(),
                        prev.path.display()
                    );
                }
            }
            files.push(StFile {
                path: p,
                mmap,
                data_start: 8 + n,
                tensors,
            });
        }
        if let Some((index_path, map)) = weight_map {
            for (k, f) in &map {
                let file = index.get(k).map(|&i| &files[i].path);
                if file.and_then(|p| p.file_name())
                    != Some(std::ffi::OsStr::new(f.as_str().unwrap_or("")))
                {
                    bail!(
                        "{}: weight_map puts tensor '{k}' in {f}, but {}",
                        index_path.display(),
                        file.map_or("no shard holds it".to_string(), |p| format!(
                            "it is in {}",
                            p.display()
                        ))
                    );
                }
            }
        }
        Ok(SafetensorsSource { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// The raw dtype, shape and little-endian bytes of a tensor.
    pub fn raw(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let f = &self.files[*self.index.get(name)?];
        let t = f.tensors.get(name)?;
        let (a, b) = t.data_offsets;
        Some((
            t.dtype,
            &t.shape,
            &f.mmap[f.data_start + a..f.data_start + b],
        ))
    }

    /// The raw dtype and shape of a tensor.
    pub fn info(&self, name: &str) -> Option<(Dtype, Vec<usize>)> {
        let f = &self.files[*self.index.get(name)?];
        f.tensors.get(name).map(|t| (t.dtype, t.shape.clone()))
    }
}

impl TensorSource for SafetensorsSource {
    fn load(&self, name: &str) -> Result<Tensor> {
        let Some(&fi) = self.index.get(name) else {
            bail!("{}: tensor '{name}' is missing", self.describe());
        };
        let f = &self.files[fi];
        let t = &f.tensors[name];
        let (a, b) = t.data_offsets;
        let bytes = &f.mmap[f.data_start + a..f.data_start + b];
        let n: usize = t.shape.iter().product();
        let data: Vec<f32> = match t.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            d => bail!(
                "{}: tensor '{name}' has dtype {d:?}; shrink reads F32, F16 and BF16",
                f.path.display()
            ),
        };
        crate::resident::release(&f.mmap, f.data_start + a..f.data_start + b);
        if data.len() != n {
            bail!(
                "{}: tensor '{name}' has {} bytes for shape {:?}",
                f.path.display(),
                bytes.len(),
                t.shape
            );
        }
        Ok(Tensor::new(t.shape.clone(), data))
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|(_, s)| s)
    }
    fn describe(&self) -> String {
        match self.files.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!(
                "{} (and {} more shards)",
                many[0].path.display(),
                many.len() - 1
            ),
        }
    }
}

/// Rows of a loaded 2-D tensor (see [`TensorSource::load_rows`]).
pub fn gather_rows(t: &Tensor, rows: &[usize], label: &str) -> Result<Vec<f32>> {
    let (n, d) = t.dims2();
    let mut out = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        if r >= n {
            bail!("row {r} of {label} is out of range (it has {n} rows)");
        }
        out.extend_from_slice(&t.data[r * d..(r + 1) * d]);
    }
    Ok(out)
}

/// Tensors from `primary` where it has them, otherwise from `fallback` (e.g. compressed layers
/// over the original model).
pub struct Overlay<'a> {
    pub primary: &'a dyn TensorSource,
    pub fallback: &'a dyn TensorSource,
}

impl TensorSource for Overlay<'_> {
    fn load(&self, name: &str) -> Result<Tensor> {
        if self.primary.contains(name) {
            self.primary.load(name)
        } else {
            self.fallback.load(name)
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.primary.contains(name) || self.fallback.contains(name)
    }
    fn describe(&self) -> String {
        format!(
            "{} over {}",
            self.primary.describe(),
            self.fallback.describe()
        )
    }
    fn label(&self, name: &str) -> String {
        if self.primary.contains(name) {
            self.primary.label(name)
        } else {
            self.fallback.label(name)
        }
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if self.primary.contains(name) {
            self.primary.shape(name)
        } else {
            self.fallback.shape(name)
        }
    }
    fn load_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        if self.primary.contains(name) {
            self.primary.load_rows(name, rows)
        } else {
            self.fallback.load_rows(name, rows)
        }
    }
}

/// A model's tensors with only some of its decoder layers, renumbered: layer `i` of the view is
/// layer `keep[i]` of `inner` (`model.layers.{i}.*` is read as `model.layers.{keep[i]}.*`);
/// layers past `keep.len()` do not exist; every other tensor (embedding, final norm, head) is
/// passed through. This is how a model with dropped layers is served to the pipeline and the
/// writers without copying anything.
pub struct LayerView {
    pub inner: Box<dyn TensorSource>,
    pub keep: Vec<usize>,
}

impl LayerView {
    /// The name in `inner` of the view's tensor `name`; `None` for a layer the view lacks.
    pub fn inner_name(&self, name: &str) -> Option<String> {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            return Some(name.to_string());
        };
        let (num, tail) = rest.split_once('.')?;
        let i: usize = num.parse().ok()?;
        let orig = *self.keep.get(i)?;
        Some(format!("model.layers.{orig}.{tail}"))
    }
}

impl TensorSource for LayerView {
    fn load(&self, name: &str) -> Result<Tensor> {
        match self.inner_name(name) {
            Some(n) => self.inner.load(&n),
            None => bail!(
                "{}: tensor '{name}' is missing (the model has {} layers after dropping)",
                self.describe(),
                self.keep.len()
            ),
        }
    }
    fn load_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        match self.inner_name(name) {
            Some(n) => self.inner.load_rows(&n, rows),
            None => gather_rows(&self.load(name)?, rows, name),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.inner_name(name)
            .is_some_and(|n| self.inner.contains(&n))
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn label(&self, name: &str) -> String {
        match self.inner_name(name) {
            Some(n) if n != name => format!("'{name}' ({} in the original)", self.inner.label(&n)),
            _ => format!("'{name}'"),
        }
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(&self.inner_name(name)?)
    }
}

/// A model's tensors with consecutive decoder layers merged (LaCo's layer collapse): layer `i` of
/// the view is the weighted sum `Σ_j c_j · θ_j` of `inner`'s layers `layers[i] = [(j, c_j), ..]`,
/// tensor by tensor (every linear weight and bias, every norm, in Hugging Face naming); a layer
/// made of one original layer with coefficient 1 is passed through unchanged. The sum is
/// accumulated in f64 and rounded to f32 once. Every other tensor (embedding, final norm, head)
/// is passed through. `shrink_recipe::merge` builds the coefficients (RDSC, Yang et al. 2024,
/// `θ*_l = θ_l + Σ_{k=1..m} (θ_{l+k} − θ_l)`); the view is how the merged model is served to
/// the pipeline and the writers without materializing it.
pub struct MergedView<S> {
    pub inner: S,
    /// Per layer of the view: the original layers and their coefficients (non-empty).
    pub layers: Vec<Vec<(usize, f64)>>,
}

impl<S: std::ops::Deref<Target = dyn TensorSource> + Send + Sync> MergedView<S> {
    /// The layer of the view, the rest of the name (`self_attn.q_proj.weight`) and the
    /// original layers behind it; `None` for a name outside the decoder layers.
    fn split<'n>(&self, name: &'n str) -> Option<(usize, &'n str)> {
        let rest = name.strip_prefix("model.layers.")?;
        let (num, tail) = rest.split_once('.')?;
        Some((num.parse().ok()?, tail))
    }

    /// The name in `inner` of the first original layer of the view's tensor `name` (the one
    /// whose shape and label stand for the merged tensor).
    pub fn head_name(&self, name: &str) -> Option<String> {
        match self.split(name) {
            None => Some(name.to_string()),
            Some((i, tail)) => {
                let (j, _) = self.layers.get(i)?.first()?;
                Some(format!("model.layers.{j}.{tail}"))
            }
        }
    }
}

impl<S: std::ops::Deref<Target = dyn TensorSource> + Send + Sync> TensorSource for MergedView<S> {
    fn load(&self, name: &str) -> Result<Tensor> {
        let Some((i, tail)) = self.split(name) else {
            return self.inner.load(name);
        };
        let Some(parts) = self.layers.get(i) else {
            bail!(
                "{}: tensor '{name}' is missing (the model has {} layers after merging)",
                self.describe(),
                self.layers.len()
            );
        };
        // zero coefficients (RDSC of two layers gives the first 0) are not read
        let live: Vec<(usize, f64)> = parts.iter().copied().filter(|&(_, c)| c != 0.0).collect();
        match live[..] {
            [(j, 1.0)] => return self.inner.load(&format!("model.layers.{j}.{tail}")),
            [] => bail!(
                "{}: layer {i} of the merged model has no original layer with a nonzero \
                 coefficient ({parts:?})",
                self.describe()
            ),
            _ => {}
        }
        let mut acc: Vec<f64> = vec![];
        let mut shape: Vec<usize> = vec![];
        for (k, &(j, c)) in live.iter().enumerate() {
            let n = format!("model.layers.{j}.{tail}");
            let t = self.inner.load(&n)?;
            if k == 0 {
                shape = t.shape.clone();
                acc = vec![0f64; t.data.len()];
            } else if t.shape != shape {
                bail!(
                    "{}: cannot merge {} (shape {:?}) into layer {} (shape {shape:?}): merged \
                     layers must have the same tensors",
                    self.describe(),
                    self.inner.label(&n),
                    t.shape,
                    parts[0].0
                );
            }
            for (a, v) in acc.iter_mut().zip(&t.data) {
                *a += c * *v as f64;
            }
        }
        Ok(Tensor::new(
            shape,
            acc.into_iter().map(|v| v as f32).collect(),
        ))
    }
    fn contains(&self, name: &str) -> bool {
        match self.split(name) {
            None => self.inner.contains(name),
            Some((i, tail)) => self.layers.get(i).is_some_and(|p| {
                p.iter()
                    .all(|(j, _)| self.inner.contains(&format!("model.layers.{j}.{tail}")))
            }),
        }
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn label(&self, name: &str) -> String {
        match (self.split(name), self.head_name(name)) {
            (Some((i, _)), Some(n)) => {
                let from: Vec<String> = self.layers[i].iter().map(|(j, _)| j.to_string()).collect();
                format!(
                    "'{name}' ({} in the original, merged from layers {})",
                    self.inner.label(&n),
                    from.join(", ")
                )
            }
            _ => format!("'{name}'"),
        }
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(&self.head_name(name)?)
    }
}

/// A llama.cpp GGUF file, served in Hugging Face naming and layout (dequantized to f32; q/k rows
/// un-permuted where llama.cpp's converter permuted them; an expert's linear cut out of the
/// stacked `ffn_*_exps` tensor; Gemma's norms back to `w` from llama.cpp's `1 + w`).
pub struct GgufSource {
    pub file: GgufFile,
    cfg: ModelConfig,
    /// Per layer (built when the layer is first asked for, so a declared layer count never
    /// drives work beyond the layers read): Hugging Face name -> place in the file.
    layers: std::sync::Mutex<HashMap<usize, std::sync::Arc<NameMap>>>,
}

type NameMap = HashMap<String, (arch::GgufRef, arch::TensorKind)>;

impl GgufSource {
    pub fn new(file: GgufFile, cfg: &ModelConfig) -> Self {
        GgufSource {
            file,
            cfg: cfg.clone(),
            layers: Default::default(),
        }
    }
    fn gguf_ref(&self, name: &str) -> Option<(arch::GgufRef, arch::TensorKind)> {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, _)| i.parse::<usize>().ok());
        let Some(i) = layer.filter(|&i| i < self.cfg.num_layers) else {
            return arch::tensor_entry(&self.cfg, name).map(|e| (e.gguf, e.kind));
        };
        let map = {
            let mut cache = self.layers.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .entry(i)
                .or_insert_with(|| {
                    let lay = arch::layer_layout(&self.cfg, i);
                    std::sync::Arc::new(
                        arch::layer_tensors(&self.cfg, i, &lay)
                            .into_iter()
                            .map(|e| (e.hf, (e.gguf, e.kind)))
                            .collect(),
                    )
                })
                .clone()
        };
        map.get(name).cloned()
    }
}

/// Undoes llama.cpp's `permute` of q/k rows: GGUF row `h*2d + 2i + j` is HF row `h*2d + j*d + i`.
pub fn unpermute_rows(t: &mut Tensor, n_head: usize) -> Result<()> {
    if t.shape.len() != 2 {
        bail!("expected a 2-D weight, found shape {:?}", t.shape);
    }
    let (rows, cols) = t.dims2();
    if n_head == 0 || rows % (2 * n_head) != 0 {
        bail!("cannot un-permute {rows} rows over {n_head} heads");
    }
    let d = rows / n_head / 2;
    let mut out = vec![0f32; t.data.len()];
    for h in 0..n_head {
        for i in 0..d {
            for j in 0..2 {
                let src = h * 2 * d + 2 * i + j;
                let dst = h * 2 * d + j * d + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    t.data = out;
    Ok(())
}

impl TensorSource for GgufSource {
    fn load(&self, name: &str) -> Result<Tensor> {
        let path = self.file.path().display();
        let (r, kind) = self
            .gguf_ref(name)
            .with_context(|| format!("{path}: no GGUF tensor corresponds to '{name}'"))?;
        let gname = &r.name;
        let info = self
            .file
            .tensor(gname)
            .with_context(|| format!("{path}: tensor '{gname}' (for '{name}') is missing"))?;
        let mut t = match r.expert {
            None => Tensor::new(info.shape_row_major(), self.file.dequantize(gname)?),
            Some(e) => {
                // stacked experts: ggml dims [d_in, d_out, n_experts]
                let shape = info.shape_row_major();
                let [n, d_out, d_in] = shape[..] else {
                    bail!("{path}: tensor '{gname}' has shape {shape:?}; stacked experts are 3-D [experts, d_out, d_in]");
                };
                if e >= n {
                    bail!("{path}: tensor '{gname}' holds {n} experts, but the config declares expert {e} (expert_count disagrees with the tensors)");
                }
                let rows = (e * d_out) as u64..((e + 1) * d_out) as u64;
                Tensor::new(vec![d_out, d_in], self.file.dequantize_rows(gname, rows)?)
            }
        };
        if self.cfg.arch.gguf_permutes_qk() && name.ends_with(".weight") {
            if name.contains(".q_proj.") {
                unpermute_rows(&mut t, self.cfg.num_heads)
                    .with_context(|| format!("{path}: tensor '{gname}'"))?;
            } else if name.contains(".k_proj.") {
                unpermute_rows(&mut t, self.cfg.num_kv_heads)
                    .with_context(|| format!("{path}: tensor '{gname}'"))?;
            }
        }
        if self.cfg.arch.norm_style == arch::NormStyle::OnePlus
            && matches!(
                kind,
                arch::TensorKind::Norm(_) | arch::TensorKind::FinalNorm
            )
        {
            t.data.iter_mut().for_each(|w| *w -= 1.0);
        }
        Ok(t)
    }
    fn load_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        // the embedding: stored as it is read (no q/k permutation, no 1 + w), one row per token
        if name != arch::HF_EMBED {
            return gather_rows(&self.load(name)?, rows, &self.label(name));
        }
        let path = self.file.path().display();
        let (r, _) = self
            .gguf_ref(name)
            .with_context(|| format!("{path}: no GGUF tensor corresponds to '{name}'"))?;
        let info = self
            .file
            .tensor(&r.name)
            .with_context(|| format!("{path}: tensor '{}' (for '{name}') is missing", r.name))?;
        let n = info.n_rows() as usize;
        let mut out = Vec::with_capacity(rows.len() * info.row_len() as usize);
        for &row in rows {
            if row >= n {
                bail!(
                    "{path}: row {row} of '{}' is out of range (it has {n} rows)",
                    r.name
                );
            }
            out.extend(
                self.file
                    .dequantize_rows(&r.name, row as u64..row as u64 + 1)?,
            );
        }
        Ok(out)
    }
    fn contains(&self, name: &str) -> bool {
        self.gguf_ref(name)
            .is_some_and(|(r, _)| self.file.tensor(&r.name).is_some())
    }
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }
    fn label(&self, name: &str) -> String {
        match self.gguf_ref(name) {
            Some((r, _)) => match r.expert {
                Some(e) => format!("'{}' expert {e} ({name})", r.name),
                None => format!("'{}' ({name})", r.name),
            },
            None => format!("'{name}'"),
        }
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (r, _) = self.gguf_ref(name)?;
        let shape = self.file.tensor(&r.name)?.shape_row_major();
        match r.expert {
            Some(_) if shape.len() == 3 => Some(shape[1..].to_vec()),
            _ => Some(shape),
        }
    }
}

/// Reads the model configuration from GGUF metadata (llama.cpp key names; where llama.cpp
/// hard-codes a family's setting instead of storing it, the same value as llama.cpp).
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let file = f.path().display().to_string();
    let a = f.get_str("general.architecture")?;
    let k = |s: &str| format!("{a}.{s}");
    let experts = f.get_u64_opt(&k("expert_count"))?.unwrap_or(0);
    let arch = Arch::from_gguf(a, experts > 0).with_context(|| {
        format!(
            "{file}: unknown architecture '{a}' (supported GGUF architectures: {})",
            Arch::supported_gguf()
        )
    })?;
    let u = |s: &str| -> Result<usize> { Ok(f.get_u64(&k(s))? as usize) };
    let hidden_size = u("embedding_length")?;
    let num_heads = u("attention.head_count")?;
    let num_kv_heads = if f.get(&k("attention.head_count_kv")).is_some() {
        u("attention.head_count_kv")?
    } else {
        num_heads
    };
    let head_dim = if f.get(&k("attention.key_length")).is_some() {
        u("attention.key_length")?
    } else {
        hidden_size.checked_div(num_heads).unwrap_or(0)
    };
    let vocab_size = if f.get(&k("vocab_size")).is_some() {
        u("vocab_size")?
    } else {
        f.get_str_array("tokenizer.ggml.tokens")?.len()
    };
    let mut rope_scaling = match f.get(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: f.get_f64(&k("rope.scaling.factor"))?,
        }),
        Some(t) => {
            bail!("{file}: rope scaling type '{t}' is not supported (supported: none, linear)")
        }
    };
    let rotary_dim = match f.get(&k("rope.dimension_count")) {
        Some(_) => u("rope.dimension_count")?,
        None => head_dim,
    };
    let context_length = if f.get(&k("context_length")).is_some() {
        u("context_length")?
    } else {
        2048
    };
    let (long_t, short_t) = ("rope_factors_long.weight", "rope_factors_short.weight");
    match (f.tensor(long_t).is_some(), f.tensor(short_t).is_some()) {
        (false, false) => {
            // llama.cpp scales cos and sin by this key whatever the rope
            if let Some(a) = f
                .get_f64_opt(&k("rope.scaling.attn_factor"))?
                .filter(|&a| a != 1.0)
            {
                bail!("{file}: '{}' is {a} without the LongRoPE tensors '{long_t}' and '{short_t}'; shrink supports that scale only with them", k("rope.scaling.attn_factor"));
            }
        }
        (true, true) => {
            // llama.cpp's LongRoPE (Phi-3 128k): see RopeScaling::LongRope
            if rope_scaling.is_some() || f.tensor("rope_freqs.weight").is_some() {
                bail!("{file}: has '{long_t}' and also another rope scaling ('rope_freqs.weight' or '{}')", k("rope.scaling.type"));
            }
            let read = |name: &str| -> Result<Vec<f64>> {
                let v = f
                    .dequantize(name)
                    .with_context(|| format!("{file}: tensor '{name}'"))?;
                if v.len() != rotary_dim / 2 {
                    bail!(
                        "{file}: tensor '{name}' holds {} factors; the rotary dimension {rotary_dim} ('{}') needs {}",
                        v.len(),
                        k("rope.dimension_count"),
                        rotary_dim / 2
                    );
                }
                Ok(v.iter().map(|&x| x as f64).collect())
            };
            let (long, short) = (read(long_t)?, read(short_t)?);
            // llama.cpp: n_ctx_orig_yarn defaults to the training context, the attention
            // factor to 1
            let orig = match f.get_u64_opt(&k("rope.scaling.original_context_length"))? {
                Some(o) => o as usize,
                None => context_length,
            };
            let attention_factor = f
                .get_f64_opt(&k("rope.scaling.attn_factor"))?
                .unwrap_or(1.0);
            rope_scaling = Some(if long == short && attention_factor == 1.0 {
                RopeScaling::Factors { factors: short }
            } else {
                RopeScaling::LongRope {
                    short_factor: short,
                    long_factor: long,
                    original_max_position_embeddings: orig,
                    attention_factor,
                }
            });
        }
        (has_long, _) => {
            let (have, lack) = if has_long {
                (long_t, short_t)
            } else {
                (short_t, long_t)
            };
            bail!("{file}: has the tensor '{have}' but not '{lack}'; llama.cpp's long-context rope needs both");
        }
    }
    if f.tensor("rope_freqs.weight").is_some() {
        // llama.cpp's converter writes Llama 3.1 scaling as per-frequency divisors
        if rope_scaling.is_some() {
            bail!(
                "{file}: has both a 'rope_freqs.weight' tensor and '{}'",
                k("rope.scaling.type")
            );
        }
        let factors = f
            .dequantize("rope_freqs.weight")
            .with_context(|| format!("{file}: tensor 'rope_freqs.weight'"))?;
        rope_scaling = Some(RopeScaling::Factors {
            factors: factors.iter().map(|&x| x as f64).collect(),
        });
    }
    let num_layers = u("block_count")?;
    let tie = f.tensor("output.weight").is_none();
    let qkv_bias =
        f.tensor("blk.0.attn_q.bias").is_some() || f.tensor("blk.0.attn_qkv.bias").is_some();
    let tok_id = |key: &str| f.get(key).and_then(|v| v.as_u64()).map(|x| x as u32);
    let f64_opt = |key: &str| f.get_f64_opt(&k(key));
    let (mut sliding_window, mut sliding_layers, mut rope_local_theta) = (None, vec![], None);
    let mut query_pre_attn_scalar = None;
    if arch.name == "gemma3_text" {
        // llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): every 6th layer global unless the file
        // gives a pattern, a local rope base of 10000, and queries scaled by 1/sqrt(key_length).
        let w = u("attention.sliding_window").with_context(|| {
            format!("{file}: a gemma3 GGUF needs the sliding-window size '{a}.attention.sliding_window'")
        })?;
        sliding_window = Some(w);
        sliding_layers = match f.get(&k("attention.sliding_window_pattern")) {
            None => (0..num_layers).map(|i| (i + 1) % 6 != 0).collect(),
            Some(v) => match (v.as_u64(), v.as_array()) {
                (Some(p), _) if p > 0 => (0..num_layers).map(|i| (i + 1) % p as usize != 0).collect(),
                (_, Some(arr)) if arr.len() == num_layers => arr
                    .iter()
                    .map(|b| b.as_bool())
                    .collect::<Option<Vec<bool>>>()
                    .with_context(|| format!("{file}: '{a}.attention.sliding_window_pattern' must be a list of booleans"))?,
                _ => bail!("{file}: '{a}.attention.sliding_window_pattern' must be a positive integer or one boolean per layer ({num_layers})"),
            },
        };
        rope_local_theta = Some(f64_opt("rope.freq_base_swa")?.unwrap_or(10000.0));
        query_pre_attn_scalar = Some(head_dim as f64);
    }
    let moe = if arch.is_moe() {
        let used = u("expert_used_count")?;
        let ff = match f.get(&k("expert_feed_forward_length")) {
            Some(_) => u("expert_feed_forward_length")?,
            None => u("feed_forward_length")?,
        };
        let dense_layers: Vec<usize> = (0..num_layers)
            .filter(|i| f.tensor(&format!("blk.{i}.ffn_gate_inp.weight")).is_none())
            .collect();
        if dense_layers.len() == num_layers {
            bail!("{file}: '{a}.expert_count' is {experts} but no layer has a router tensor (blk.N.ffn_gate_inp.weight)");
        }
        if used == 0 || used as u64 > experts {
            bail!("{file}: '{a}.expert_used_count' {used} must be between 1 and expert_count {experts}");
        }
        Some(crate::config::MoeConfig {
            num_experts: experts as usize,
            top_k: used,
            expert_intermediate: ff,
            norm_topk_prob: match f.get(&k("expert_weights_norm")) {
                Some(v) => v.as_bool().unwrap_or(arch.gguf_renormalizes_topk),
                None => arch.gguf_renormalizes_topk,
            },
            dense_layers,
        })
    } else {
        None
    };
    let cfg = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: u("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: f.get_f64(&k("attention.layer_norm_rms_epsilon"))?,
        rope_theta: if f.get(&k("rope.freq_base")).is_some() {
            f.get_f64(&k("rope.freq_base"))?
        } else {
            10000.0
        },
        rope_scaling,
        max_position_embeddings: context_length,
        tie_word_embeddings: tie,
        qkv_bias,
        o_bias: f.tensor("blk.0.attn_output.bias").is_some(),
        mlp_bias: f.tensor("blk.0.ffn_up.bias").is_some(),
        bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: tok_id("tokenizer.ggml.eos_token_id"),
        sliding_window,
        sliding_layers,
        rope_local_theta,
        act: arch.default_act,
        query_pre_attn_scalar,
        rotary_dim,
        attn_softcap: match arch.attn_softcap {
            true => f64_opt("attn_logit_softcapping")?,
            false => None,
        },
        final_softcap: f64_opt("final_logit_softcapping")?,
        moe,
    };
    cfg.validate(&file)?;
    Ok(cfg)
}
