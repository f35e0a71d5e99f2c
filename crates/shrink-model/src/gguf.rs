//! GGUF reading and writing.
//!
//! File layout (little-endian, versions 2 and 3):
//!
//! ```text
//! magic "GGUF" | version: u32 | n_tensors: u64 | n_kv: u64
//! n_kv x { key: string, value_type: u32, value }
//! n_tensors x { name: string, n_dims: u32, dims: [u64; n_dims], ggml_type: u32, offset: u64 }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor starts at data_start + offset, offset % alignment == 0
//! ```
//!
//! A string is `len: u64` followed by `len` bytes of UTF-8; an array is
//! `elem_type: u32, n: u64` followed by `n` values. `dims[0]` is the
//! fastest-varying dimension (the row length).
//!
//! [`GgufFile::open`] validates everything it reads: every malformed input
//! gives an error naming the file and the problem, allocations are bounded by
//! the bytes actually present, and the tensor data is memory-mapped and only
//! touched on request.

// `x % n != 0` is kept over `is_multiple_of` (Rust 1.87) for the workspace MSRV.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;

use crate::quants;

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version [`GgufWriter`] writes.
pub const GGUF_VERSION: u32 = 3;
/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata key that overrides the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a ggml tensor can have.
pub const MAX_DIMS: usize = 4;
/// Deepest array nesting accepted (an array of arrays has depth 2).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// Most array elements (summed over all metadata) accepted in one file; each
/// element costs ~32 bytes in memory, so this bounds metadata memory use.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 24;
/// Largest alignment accepted.
const MAX_ALIGNMENT: u64 = 1 << 30;

// GGUF metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Smallest encoded size of one value of GGUF value type `ty`, or `None` for
/// an unknown type id.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => 8,    // length prefix
        T_ARRAY => 4 + 8, // element type + count
        _ => return None,
    })
}

fn value_type_name(ty: u32) -> &'static str {
    match ty {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => "unknown",
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// Elements must all have the same type (GGUF arrays are homogeneous).
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => T_U8,
            GgufValue::I8(_) => T_I8,
            GgufValue::U16(_) => T_U16,
            GgufValue::I16(_) => T_I16,
            GgufValue::U32(_) => T_U32,
            GgufValue::I32(_) => T_I32,
            GgufValue::U64(_) => T_U64,
            GgufValue::I64(_) => T_I64,
            GgufValue::F32(_) => T_F32,
            GgufValue::F64(_) => T_F64,
            GgufValue::Bool(_) => T_BOOL,
            GgufValue::String(_) => T_STRING,
            GgufValue::Array(_) => T_ARRAY,
        }
    }

    /// Short type name for messages: "u32", "string", "array", ...
    pub fn type_name(&self) -> &'static str {
        value_type_name(self.type_id())
    }

    /// Any integer type whose value is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Floats, and integers converted to `f64` (large 64-bit ones are rounded).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    fn is_integer(&self) -> bool {
        matches!(
            self,
            GgufValue::U8(_)
                | GgufValue::I8(_)
                | GgufValue::U16(_)
                | GgufValue::I16(_)
                | GgufValue::U32(_)
                | GgufValue::I32(_)
                | GgufValue::U64(_)
                | GgufValue::I64(_)
        )
    }

    /// Description of the value's type for messages, e.g. "array of string".
    fn describe_type(&self) -> String {
        match self {
            GgufValue::Array(a) => match a.first() {
                Some(e) => format!("array of {}", e.describe_type()),
                None => "empty array".to_string(),
            },
            v => v.type_name().to_string(),
        }
    }
}

impl fmt::Display for GgufValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::String(s) => write!(f, "{s:?}"),
            GgufValue::Array(a) => {
                write!(f, "[")?;
                for (i, v) in a.iter().take(8).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len() > 8 {
                    write!(f, ", ... ({} elements)", a.len())?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Tensor element types, with ids from `ggml.h`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// Written and read by name (`"Q4_K"`), as llama.cpp spells it.
impl serde::Serialize for GgmlType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for GgmlType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        GgmlType::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown ggml type '{name}'")))
    }
}

impl GgmlType {
    /// All known types, in id order.
    pub const ALL: [GgmlType; 32] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
    ];

    /// The type with ggml id `id`, or `None` for ids this crate does not know
    /// (removed types 4 and 5, ids beyond the list, ...).
    pub fn from_u32(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.to_u32() == id)
    }

    /// Looks a type up by its [`name`](Self::name), case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The ggml type id.
    pub fn to_u32(&self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::IQ2_XXS => 16,
            GgmlType::IQ2_XS => 17,
            GgmlType::IQ3_XXS => 18,
            GgmlType::IQ1_S => 19,
            GgmlType::IQ4_NL => 20,
            GgmlType::IQ3_S => 21,
            GgmlType::IQ2_S => 22,
            GgmlType::IQ4_XS => 23,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::IQ1_M => 29,
            GgmlType::BF16 => 30,
            GgmlType::TQ1_0 => 34,
            GgmlType::TQ2_0 => 35,
            GgmlType::MXFP4 => 39,
        }
    }

    /// Elements per block.
    pub fn block_size(&self) -> usize {
        self.sizes().0
    }

    /// Bytes per block.
    pub fn type_size(&self) -> usize {
        self.sizes().1
    }

    /// `(block_size, type_size)` as in ggml's type traits.
    fn sizes(&self) -> (usize, usize) {
        const K: usize = quants::QK_K;
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::BF16 => (1, 2),
            GgmlType::F64 => (1, 8),
            GgmlType::I8 => (1, 1),
            GgmlType::I16 => (1, 2),
            GgmlType::I32 => (1, 4),
            GgmlType::I64 => (1, 8),
            GgmlType::Q4_0 => (32, 2 + 16),
            GgmlType::Q4_1 => (32, 2 + 2 + 16),
            GgmlType::Q5_0 => (32, 2 + 4 + 16),
            GgmlType::Q5_1 => (32, 2 + 2 + 4 + 16),
            GgmlType::Q8_0 => (32, 2 + 32),
            GgmlType::Q8_1 => (32, 2 + 2 + 32),
            GgmlType::Q2K => (K, 2 + 2 + K / 16 + K / 4),
            GgmlType::Q3K => (K, 2 + K / 4 + K / 8 + 12),
            GgmlType::Q4K => (K, 2 + 2 + K / 2 + 12),
            GgmlType::Q5K => (K, 2 + 2 + K / 2 + K / 8 + 12),
            GgmlType::Q6K => (K, 2 + K / 2 + K / 4 + K / 16),
            GgmlType::Q8K => (K, 4 + K + K / 8),
            GgmlType::IQ2_XXS => (K, 2 + K / 4),
            GgmlType::IQ2_XS => (K, 2 + K / 4 + K / 32),
            GgmlType::IQ3_XXS => (K, 2 + K / 4 + K / 8),
            GgmlType::IQ1_S => (K, 2 + K / 8 + K / 16),
            GgmlType::IQ4_NL => (32, 2 + 16),
            GgmlType::IQ3_S => (K, 2 + K / 4 + K / 8 + K / 32 + 4),
            GgmlType::IQ2_S => (K, 2 + K / 4 + K / 16),
            GgmlType::IQ4_XS => (K, 2 + 2 + K / 2 + K / 64),
            GgmlType::IQ1_M => (K, K / 8 + K / 16 + K / 32),
            GgmlType::TQ1_0 => (K, 2 + 4 * 13),
            GgmlType::TQ2_0 => (K, 2 + 64),
            GgmlType::MXFP4 => (32, 1 + 16),
        }
    }

    /// The name as gguf-py / `gguf-dump` print it: "F32", "Q4_K", "BF16", ...
    pub fn name(&self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::IQ2_XXS => "IQ2_XXS",
            GgmlType::IQ2_XS => "IQ2_XS",
            GgmlType::IQ3_XXS => "IQ3_XXS",
            GgmlType::IQ1_S => "IQ1_S",
            GgmlType::IQ4_NL => "IQ4_NL",
            GgmlType::IQ3_S => "IQ3_S",
            GgmlType::IQ2_S => "IQ2_S",
            GgmlType::IQ4_XS => "IQ4_XS",
            GgmlType::I8 => "I8",
            GgmlType::I16 => "I16",
            GgmlType::I32 => "I32",
            GgmlType::I64 => "I64",
            GgmlType::F64 => "F64",
            GgmlType::IQ1_M => "IQ1_M",
            GgmlType::BF16 => "BF16",
            GgmlType::TQ1_0 => "TQ1_0",
            GgmlType::TQ2_0 => "TQ2_0",
            GgmlType::MXFP4 => "MXFP4",
        }
    }

    /// True when [`quants::dequantize`] supports this type.
    pub fn can_dequantize(&self) -> bool {
        quants::is_supported(*self)
    }

    /// Bytes taken by `n_elements` elements, or `None` when `n_elements` is
    /// not a multiple of the block size or the size overflows.
    pub fn bytes_for(&self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if n_elements % bs != 0 {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying dimension (the row length).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Product of the dims (1 for a 0-d tensor); saturates at `u64::MAX` for
    /// infos that were not validated by [`GgufFile::open`].
    pub fn n_elements(&self) -> u64 {
        self.checked_n_elements().unwrap_or(u64::MAX)
    }

    /// Product of the dims, `None` on overflow.
    pub fn checked_n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// The dims reversed (row-major / PyTorch order): `[576, 1536]` -> `[1536, 576]`.
    pub fn shape_row_major(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// Number of rows (product of all dims but the first; 1 for 0-d and 1-d tensors).
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Elements per row (`dims[0]`, 1 for a 0-d tensor).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Bytes of tensor data; saturates at `u64::MAX` for invalid infos.
    pub fn n_bytes(&self) -> u64 {
        self.checked_n_bytes().unwrap_or(u64::MAX)
    }

    /// Bytes of tensor data, `None` when the element count overflows or the row
    /// length is not a multiple of the block size.
    pub fn checked_n_bytes(&self) -> Option<u64> {
        let row = self.dtype.bytes_for(self.row_len())?;
        self.dims
            .iter()
            .skip(1)
            .try_fold(row, |acc, &d| acc.checked_mul(d))
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> u64 {
        self.dtype.bytes_for(self.row_len()).unwrap_or(u64::MAX)
    }
}

/// A memory-mapped GGUF file whose header has been fully validated.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
    alignment: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("alignment", &self.alignment)
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates `path`. The tensor data is memory-mapped, not read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        if len == 0 {
            bail!(
                "{}: file is empty (0 bytes), not a GGUF file (bad magic)",
                path.display()
            );
        }
        // SAFETY: the map is read-only. As with every mmap-based reader, the
        // file must not be truncated or modified by another process while it
        // is open; we only ever read it through bounds-checked slices.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot memory-map", path.display()))?;
        let header = parse_header(&mmap).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: header.version,
            key_index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
            data_offset: header.data_offset,
            alignment: header.alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment (`general.alignment` or 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key)
            .ok_or_else(|| anyhow!("{}: metadata key '{key}' is missing", self.path.display()))
    }

    fn wrong_type(&self, key: &str, v: &GgufValue, expected: &str) -> anyhow::Error {
        anyhow!(
            "{}: metadata key '{key}' has type {}, expected {expected}",
            self.path.display(),
            v.describe_type()
        )
    }

    /// A non-negative integer of any integer type.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        if !v.is_integer() {
            return Err(self.wrong_type(key, v, "an integer"));
        }
        v.as_u64().ok_or_else(|| {
            anyhow!(
                "{}: metadata key '{key}' has value {v}, expected a non-negative integer",
                self.path.display()
            )
        })
    }

    /// Like [`get_u64`](Self::get_u64) but `Ok(None)` when the key is absent.
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_u64(key).map(Some),
        }
    }

    /// An integer of any integer type that fits in `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        if !v.is_integer() {
            return Err(self.wrong_type(key, v, "an integer"));
        }
        v.as_i64().ok_or_else(|| {
            anyhow!(
                "{}: metadata key '{key}' has value {v}, which does not fit in an i64",
                self.path.display()
            )
        })
    }

    /// A float, or an integer converted to `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong_type(key, v, "a number"))
    }

    /// Like [`get_f64`](Self::get_f64) but `Ok(None)` when the key is absent.
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_f64(key).map(Some),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, v, "a bool"))
    }

    fn get_array(&self, key: &str, expected: &str) -> Result<&[GgufValue]> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| self.wrong_type(key, v, expected))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        const WHAT: &str = "an array of string";
        let a = self.get_array(key, WHAT)?;
        a.iter()
            .map(|e| e.as_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.wrong_type(key, &self.metadata[self.key_index[key]].1, WHAT))
    }

    /// An array of integers (any integer type whose values fit in `i64`).
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        const WHAT: &str = "an array of integers";
        let a = self.get_array(key, WHAT)?;
        let mut out = Vec::with_capacity(a.len());
        for (i, e) in a.iter().enumerate() {
            if !e.is_integer() {
                return Err(self.wrong_type(key, &self.metadata[self.key_index[key]].1, WHAT));
            }
            out.push(e.as_i64().ok_or_else(|| {
                anyhow!(
                    "{}: metadata key '{key}' element {i} has value {e}, which does not fit in an i64",
                    self.path.display()
                )
            })?);
        }
        Ok(out)
    }

    /// An array of numbers (floats or integers), converted to `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        const WHAT: &str = "an array of numbers";
        let a = self.get_array(key, WHAT)?;
        a.iter()
            .map(|e| match *e {
                GgufValue::F32(v) => Some(v),
                _ => e.as_f64().map(|v| v as f32),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.wrong_type(key, &self.metadata[self.key_index[key]].1, WHAT))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Like [`tensor`](Self::tensor) but an error naming the file and tensor
    /// when it is absent.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor(name)
            .ok_or_else(|| anyhow!("{}: tensor '{name}' is missing", self.path.display()))
    }

    /// The raw bytes of a tensor. Infos from [`tensors`](Self::tensors) are
    /// always in bounds; an info that does not fit the file gives an empty slice.
    pub fn tensor_data(&self, info: &GgufTensorInfo) -> &[u8] {
        self.tensor_range(info)
            .and_then(|r| self.mmap.get(r))
            .unwrap_or(&[])
    }

    fn tensor_range(&self, info: &GgufTensorInfo) -> Option<Range<usize>> {
        let start = self.data_offset.checked_add(info.offset)?;
        let end = start.checked_add(info.checked_n_bytes()?)?;
        Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }

    /// Dequantizes a whole tensor to `f32`, row-major (ggml order is already
    /// row-major with the dims reversed).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.require_tensor(name)?;
        let n = usize::try_from(info.n_elements()).map_err(|_| {
            anyhow!(
                "{}: tensor '{name}' is too large for this platform",
                self.path.display()
            )
        })?;
        let mut out = vec![0f32; n];
        self.dequantize_into(info, &mut out)?;
        Ok(out)
    }

    /// Dequantizes a whole tensor into `out` (`out.len()` must equal its element count).
    pub fn dequantize_into(&self, info: &GgufTensorInfo, out: &mut [f32]) -> Result<()> {
        let range = self
            .tensor_range(info)
            .filter(|r| r.end <= self.mmap.len())
            .ok_or_else(|| {
                anyhow!(
                    "{}: tensor '{}' does not fit in the file",
                    self.path.display(),
                    info.name
                )
            })?;
        if out.len() as u64 != info.n_elements() {
            bail!(
                "{}: tensor '{}' has {} elements but the output buffer holds {}",
                self.path.display(),
                info.name,
                info.n_elements(),
                out.len()
            );
        }
        let r = quants::dequantize(info.dtype, &self.mmap[range.clone()], out).map_err(|e| {
            anyhow!(
                "{}: tensor '{}' ({}): {e}",
                self.path.display(),
                info.name,
                info.dtype
            )
        });
        crate::resident::release(&self.mmap, range);
        r
    }

    /// Dequantizes rows `rows` (row = `dims[0]` elements; for an embedding
    /// matrix, one token) of a tensor.
    pub fn dequantize_rows(&self, name: &str, rows: Range<u64>) -> Result<Vec<f32>> {
        let info = self.require_tensor(name)?;
        if rows.start > rows.end || rows.end > info.n_rows() {
            bail!(
                "{}: tensor '{name}': rows {}..{} are out of range (it has {} rows)",
                self.path.display(),
                rows.start,
                rows.end,
                info.n_rows()
            );
        }
        let full = self.tensor_data(info);
        let rb = info.row_bytes();
        let n_rows = rows.end - rows.start;
        let too_big = || {
            anyhow!(
                "{}: tensor '{name}': row range too large",
                self.path.display()
            )
        };
        let start = usize::try_from(rows.start * rb).map_err(|_| too_big())?;
        let end = usize::try_from(rows.end * rb).map_err(|_| too_big())?;
        let n = usize::try_from(n_rows * info.row_len()).map_err(|_| too_big())?;
        let data = full.get(start..end).ok_or_else(too_big)?;
        let mut out = vec![0f32; n];
        let r = quants::dequantize(info.dtype, data, &mut out);
        if let Some(base) = self.tensor_range(info) {
            crate::resident::release(&self.mmap, base.start + start..base.start + end);
        }
        r.map_err(|e| {
            anyhow!(
                "{}: tensor '{name}' ({}): {e}",
                self.path.display(),
                info.dtype
            )
        })?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Parsing

struct Header {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    data_offset: u64,
    alignment: u64,
}

/// Bounds-checked little-endian reader. Errors are plain messages; the caller
/// prefixes the file path.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements read so far (bounded by [`MAX_METADATA_ELEMENTS`]).
    elements: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "file is truncated: {} needs {n} bytes at offset {} but only {} remain",
                what(),
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "file is truncated or corrupt: {} has length {len}, which exceeds the {} bytes remaining at offset {}",
                what(),
                self.remaining(),
                self.pos
            ));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            format!(
                "{} is not valid UTF-8 (invalid byte at position {})",
                what(),
                e.utf8_error().valid_up_to()
            )
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue, String> {
        let what = || format!("value of metadata key '{key}'");
        Ok(match ty {
            T_U8 => GgufValue::U8(self.array::<1>(&what)?[0]),
            T_I8 => GgufValue::I8(self.array::<1>(&what)?[0] as i8),
            T_U16 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            T_I16 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            T_U32 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            T_I32 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            T_F32 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            T_U64 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            T_I64 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            T_F64 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            T_BOOL => match self.array::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(format!(
                        "metadata key '{key}' has invalid bool value {b} (must be 0 or 1)"
                    ))
                }
            },
            T_STRING => GgufValue::String(self.string(&what)?),
            T_ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "metadata key '{key}' has arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                    ));
                }
                let elem_ty = self.u32(&|| format!("array type of metadata key '{key}'"))?;
                let n = self.u64(&|| format!("array length of metadata key '{key}'"))?;
                let min = min_value_size(elem_ty).ok_or_else(|| {
                    format!("metadata key '{key}' is an array of unknown value type id {elem_ty}")
                })?;
                let need = n.checked_mul(min);
                if !matches!(need, Some(need) if need <= self.remaining() as u64) {
                    return Err(format!(
                        "file is truncated or corrupt: metadata key '{key}' declares an array of {n} {} elements, which needs at least {} bytes but only {} remain at offset {}",
                        value_type_name(elem_ty),
                        need.map_or("more than 2^64".to_string(), |v| v.to_string()),
                        self.remaining(),
                        self.pos
                    ));
                }
                self.elements = self.elements.saturating_add(n);
                if self.elements > MAX_METADATA_ELEMENTS {
                    return Err(format!(
                        "metadata key '{key}': too many metadata array elements (more than {MAX_METADATA_ELEMENTS} in total)"
                    ));
                }
                // `n * min <= remaining`, so this allocation is bounded by the file size.
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            other => {
                return Err(format!(
                    "metadata key '{key}' has unknown value type id {other}"
                ))
            }
        })
    }
}

fn parse_header(buf: &[u8]) -> Result<Header, String> {
    let mut r = Reader {
        buf,
        pos: 0,
        elements: 0,
    };
    if buf.len() < 4 || buf[..4] != GGUF_MAGIC {
        let shown = &buf[..buf.len().min(4)];
        return Err(format!(
            "not a GGUF file: bad magic {:?} (expected \"GGUF\")",
            String::from_utf8_lossy(shown)
        ));
    }
    r.pos = 4;
    let version = r.u32(&|| "GGUF version".to_string())?;
    match version {
        2 | 3 => {}
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(format!(
                "unsupported GGUF version {v:#x}: this looks like a big-endian file, only little-endian GGUF is supported"
            ))
        }
        v => {
            return Err(format!(
                "unsupported GGUF version {v} (only versions 2 and 3 are supported)"
            ))
        }
    }
    let n_tensors = r.u64(&|| "tensor count".to_string())?;
    let n_kv = r.u64(&|| "metadata count".to_string())?;

    // Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes, each
    // tensor info 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    const MIN_KV: u64 = 8 + 4 + 1;
    const MIN_TENSOR: u64 = 8 + 4 + 4 + 8;
    let rem = r.remaining() as u64;
    if n_kv > rem / MIN_KV {
        return Err(format!(
            "metadata count {n_kv} cannot fit in the {rem} bytes after the header (file truncated or corrupt)"
        ));
    }
    if n_tensors > rem / MIN_TENSOR {
        return Err(format!(
            "tensor count {n_tensors} cannot fit in the {rem} bytes after the header (file truncated or corrupt)"
        ));
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let ty = r.u32(&|| format!("value type of metadata key '{key}'"))?;
        let value = r.value(ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(format!("duplicate metadata key '{key}'"));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
            _ => {
                return Err(format!(
                    "metadata key '{ALIGNMENT_KEY}' has invalid alignment {v} ({}); it must be a power of two no larger than {MAX_ALIGNMENT}",
                    v.type_name()
                ))
            }
        },
    };

    let rem = r.remaining() as u64;
    if n_tensors > rem / MIN_TENSOR {
        return Err(format!(
            "tensor count {n_tensors} cannot fit in the {rem} bytes after the metadata (file truncated or corrupt)"
        ));
    }
    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string(&|| format!("name of tensor #{i}"))?;
        let n_dims = r.u32(&|| format!("dimension count of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS} are supported)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let v = r.u64(&|| format!("dimension {d} of tensor '{name}'"))?;
            if v == 0 {
                return Err(format!("tensor '{name}' has a zero-sized dimension {d}"));
            }
            if v > i64::MAX as u64 {
                return Err(format!(
                    "tensor '{name}' dimension {d} is {v}, which overflows (negative as i64)"
                ));
            }
            dims.push(v);
        }
        let ty_id = r.u32(&|| format!("type of tensor '{name}'"))?;
        let dtype = GgmlType::from_u32(ty_id)
            .ok_or_else(|| format!("tensor '{name}' has unknown ggml type id {ty_id}"))?;
        let offset = r.u64(&|| format!("data offset of tensor '{name}'"))?;
        let info = GgufTensorInfo {
            name,
            dims,
            dtype,
            offset,
        };
        let name = &info.name;
        let n_el = info
            .checked_n_elements()
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                format!(
                    "tensor '{name}' element count overflows (dims {:?})",
                    info.dims
                )
            })?;
        if info.row_len() % dtype.block_size() as u64 != 0 {
            return Err(format!(
                "tensor '{name}' row length {} is not a multiple of the {dtype} block size {}",
                info.row_len(),
                dtype.block_size()
            ));
        }
        if info.checked_n_bytes().is_none() {
            return Err(format!(
                "tensor '{name}' byte size overflows ({n_el} elements of {dtype})"
            ));
        }
        if offset % alignment != 0 {
            return Err(format!(
                "tensor '{name}' data offset {offset} is misaligned (not a multiple of the alignment {alignment})"
            ));
        }
        if !names.insert(info.name.clone()) {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        tensors.push(info);
    }

    let header_end = r.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        let n_bytes = t.n_bytes();
        let end = t.offset.checked_add(n_bytes);
        if !matches!(end, Some(end) if end <= data_len) {
            return Err(format!(
                "file is truncated: tensor '{}' data ({n_bytes} bytes at data offset {}, file offset {}) extends past the end of the file ({file_len} bytes)",
                t.name,
                t.offset,
                data_offset.saturating_add(t.offset)
            ));
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.n_bytes() > b.offset {
            return Err(format!(
                "tensors '{}' (bytes {}..{}) and '{}' (bytes {}..{}) overlap",
                a.name,
                a.offset,
                a.offset + a.n_bytes(),
                b.name,
                b.offset,
                b.offset + b.n_bytes()
            ));
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        data_offset,
        alignment,
    })
}

// ---------------------------------------------------------------------------
// Writing

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory and writes it atomically.
///
/// ```no_run
/// # use shrink_model::gguf::*;
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", GgufValue::String("llama".into()));
/// w.add_tensor("x", vec![4, 2], GgmlType::F32, vec![0u8; 32]).unwrap();
/// w.write(std::path::Path::new("out.gguf")).unwrap();
/// ```
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
    /// Pad the last tensor to the alignment as well (see [`GgufWriter::pad_end`]).
    pad_end: bool,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also pads the data of the last tensor to the alignment, as gguf-py's writer and ggml's
    /// `gguf_write_to_file` do. ggml's reader, when it loads tensor data into memory
    /// (`gguf_init_from_file` with `no_alloc = false`, e.g. llama-quantize reading an imatrix),
    /// expects the padded size and rejects a file without it.
    pub fn pad_end(&mut self) -> &mut Self {
        self.pad_end = true;
        self
    }

    /// Sets a metadata value. Setting an existing key replaces its value in
    /// place (GGUF keys are unique). The value is validated by [`write`](Self::write).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: GgufValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor. `dims` are in ggml order (`dims[0]` = row length);
    /// `data` must hold exactly the bytes the dims and type require.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        dtype: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        if self.tensors.iter().any(|t| t.name == name) {
            bail!("GGUF writer: duplicate tensor name '{name}'");
        }
        if dims.len() > MAX_DIMS {
            bail!(
                "GGUF writer: tensor '{name}' has {} dimensions (at most {MAX_DIMS})",
                dims.len()
            );
        }
        if dims.contains(&0) {
            bail!("GGUF writer: tensor '{name}' has a zero-sized dimension");
        }
        let info = GgufTensorInfo {
            name,
            dims,
            dtype,
            offset: 0,
        };
        let expected = info.checked_n_bytes().ok_or_else(|| {
            anyhow!(
                "GGUF writer: tensor '{}' dims {:?} do not fit {} blocks of {} elements (or overflow)",
                info.name,
                info.dims,
                dtype,
                dtype.block_size()
            )
        })?;
        if data.len() as u64 != expected {
            bail!(
                "GGUF writer: tensor '{}' ({dtype}, dims {:?}) needs {expected} bytes, got {}",
                info.name,
                info.dims,
                data.len()
            );
        }
        self.tensors.push(PendingTensor {
            name: info.name,
            dims: info.dims,
            dtype,
            data,
        });
        Ok(self)
    }

    /// The data alignment its metadata sets (32 by default).
    pub fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
                _ => bail!(
                    "GGUF writer: '{ALIGNMENT_KEY}' = {v} is not a power of two no larger than {MAX_ALIGNMENT}"
                ),
            },
        }
    }

    /// Serializes the header (everything before the data section, padding included).
    fn header_bytes(&self, alignment: u64) -> Result<(Vec<u8>, Vec<u64>)> {
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut h, k);
            h.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut h, v, k, 0)?;
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.dtype.to_u32().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(alignment) * alignment;
        }
        let padded = (h.len() as u64).div_ceil(alignment) * alignment;
        h.resize(padded as usize, 0);
        Ok((h, offsets))
    }

    /// The length of the file [`write`](Self::write) would write if, instead of the tensors
    /// added so far, it held `tensors` (name, dims in ggml order, type), in that order: the
    /// header (this writer's metadata and the tensor infos, padded to the alignment) and each
    /// tensor's data padded to the alignment (the last one too with [`pad_end`](Self::pad_end)).
    /// Nothing is serialized but the metadata; for sizing a file before its data exists.
    pub fn predicted_len(&self, tensors: &[(String, Vec<u64>, GgmlType)]) -> Result<u64> {
        let alignment = self.alignment()?;
        let mut h = Vec::new();
        for (k, v) in &self.metadata {
            put_string(&mut h, k);
            h.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut h, v, k, 0)?;
        }
        // magic, version, tensor count, metadata count
        let mut header = 4 + 4 + 8 + 8 + h.len() as u64;
        let mut data = 0u64;
        for (i, (name, dims, ty)) in tensors.iter().enumerate() {
            // name (u64 length + bytes), n_dims u32, dims u64 each, type u32, offset u64
            header += 8 + name.len() as u64 + 4 + 8 * dims.len() as u64 + 4 + 8;
            let info = GgufTensorInfo {
                name: name.clone(),
                dims: dims.clone(),
                dtype: *ty,
                offset: 0,
            };
            let n = info.checked_n_bytes().ok_or_else(|| {
                anyhow!(
                    "GGUF size: tensor '{name}' dims {dims:?} do not fit {ty} blocks (or overflow)"
                )
            })?;
            data += if i + 1 < tensors.len() || self.pad_end {
                n.next_multiple_of(alignment)
            } else {
                n
            };
        }
        Ok(header.next_multiple_of(alignment) + data)
    }

    /// Serializes the whole file to memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    fn write_to(&self, w: &mut dyn Write) -> Result<()> {
        let alignment = self.alignment()?;
        let (header, _) = self.header_bytes(alignment)?;
        w.write_all(&header)?;
        let zeros = vec![0u8; alignment as usize];
        for (i, t) in self.tensors.iter().enumerate() {
            w.write_all(&t.data)?;
            if i + 1 < self.tensors.len() || self.pad_end {
                let pad = (t.data.len() as u64).next_multiple_of(alignment) - t.data.len() as u64;
                w.write_all(&zeros[..pad as usize])?;
            }
        }
        Ok(())
    }

    /// Writes the file to [`temp_sibling`]`(path)`, syncs it and renames it to `path`; on
    /// failure the temporary file is removed and `path` is untouched.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = temp_sibling(path)?;
        let result = (|| -> Result<()> {
            let f = File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            self.write_to(&mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("{}: cannot write GGUF file", path.display())));
        }
        Ok(())
    }
}

/// The temporary file a writer fills before renaming it to `path`: `.NAME.part-PID` in the same
/// directory, so that the rename is atomic and no file of the user's is clobbered.
pub fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a valid output path", path.display()))?;
    Ok(path.with_file_name(format!(
        ".{}.part-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn put_string(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

/// The element type of an empty metadata array: that of llama.cpp's own key (gguf-py's
/// `Keys.Tokenizer`: string lists, f32 scores, i32 token types), u8 for any other key.
fn empty_array_type(key: &str) -> u32 {
    match key {
        "tokenizer.ggml.tokens"
        | "tokenizer.ggml.merges"
        | "general.tags"
        | "general.languages"
        | "general.datasets" => T_STRING,
        "tokenizer.ggml.scores" => T_F32,
        "tokenizer.ggml.token_type" => T_I32,
        _ => T_U8,
    }
}

fn put_value(h: &mut Vec<u8>, v: &GgufValue, key: &str, depth: usize) -> Result<()> {
    match v {
        GgufValue::U8(x) => h.push(*x),
        GgufValue::I8(x) => h.push(*x as u8),
        GgufValue::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => h.push(*x as u8),
        GgufValue::String(s) => put_string(h, s),
        GgufValue::Array(a) => {
            if depth >= MAX_ARRAY_DEPTH {
                bail!("GGUF writer: metadata key '{key}' has arrays nested deeper than {MAX_ARRAY_DEPTH} levels");
            }
            // An empty array has no element to take the type from: use the type llama.cpp
            // expects for the key (it refuses e.g. an empty u8 `tokenizer.ggml.merges`).
            let elem_ty = a
                .first()
                .map_or_else(|| empty_array_type(key), GgufValue::type_id);
            if let Some(bad) = a.iter().find(|e| e.type_id() != elem_ty) {
                bail!(
                    "GGUF writer: metadata key '{key}' mixes {} and {} in one array (GGUF arrays are homogeneous)",
                    value_type_name(elem_ty),
                    bad.type_name()
                );
            }
            h.extend_from_slice(&elem_ty.to_le_bytes());
            h.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for e in a {
                put_value(h, e, key, depth + 1)?;
            }
        }
    }
    Ok(())
}
