//! llama.cpp's saved log-probabilities file (`llama-perplexity --kl-divergence-base FILE`, read
//! back by `--kl-divergence`), so that a reference model runs once and either tool can read the
//! other's file.
//!
//! Layout (tools/perplexity/perplexity.cpp, `perplexity()` and `kl_divergence()`), little-endian:
//! `"_logits_"`, `n_ctx: u32`, `n_vocab: i32`, `n_chunk: i32`, the `n_chunk * n_ctx` evaluated
//! tokens as i32 (the text's tokens, before BOS replaces each chunk's first), then for each chunk
//! `n_ctx - 1 - n_ctx/2` rows of [`row_len`]`(n_vocab)` uint16 (see [`quantize_log_probs`]).
//!
//! [`quantize_log_probs`]: crate::kld::quantize_log_probs
use crate::kld::row_len;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"_logits_";

/// Rows scored per chunk of `n_ctx` tokens (the second half, less the last position).
pub fn rows_per_chunk(n_ctx: usize) -> usize {
    n_ctx - 1 - n_ctx / 2
}

/// Writes a file under a temporary name; [`LogitsWriter::finish`] renames it into place.
pub struct LogitsWriter {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
    nv: usize,
    rows_left: usize,
}

impl LogitsWriter {
    pub fn create(path: &Path, n_ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<Self> {
        if n_ctx == 0 || tokens.len() % n_ctx != 0 {
            bail!("{} tokens are not whole chunks of {n_ctx}", tokens.len());
        }
        let n_chunk = tokens.len() / n_ctx;
        let tmp = path.with_extension("part");
        let f = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 22, f);
        let mut head = Vec::with_capacity(20 + 4 * tokens.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(n_ctx as u32).to_le_bytes());
        head.extend_from_slice(&(n_vocab as i32).to_le_bytes());
        head.extend_from_slice(&(n_chunk as i32).to_le_bytes());
        for &t in tokens {
            head.extend_from_slice(&(t as i32).to_le_bytes());
        }
        w.write_all(&head)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        Ok(LogitsWriter {
            path: path.into(),
            tmp,
            w: Some(w),
            nv: row_len(n_vocab),
            rows_left: n_chunk * rows_per_chunk(n_ctx),
        })
    }

    /// Appends stored rows (a multiple of the row length).
    pub fn rows(&mut self, rows: &[u16]) -> Result<()> {
        let n = rows.len() / self.nv;
        if n * self.nv != rows.len() || n > self.rows_left {
            bail!(
                "{}: internal error: wrong number of rows",
                self.tmp.display()
            );
        }
        self.rows_left -= n;
        let mut bytes = Vec::with_capacity(rows.len() * 2);
        for r in rows {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        self.w
            .as_mut()
            .unwrap()
            .write_all(&bytes)
            .with_context(|| format!("{}: cannot write", self.tmp.display()))
    }

    /// Flushes and renames the file into place (refuses an incomplete file).
    pub fn finish(mut self) -> Result<()> {
        if self.rows_left != 0 {
            bail!(
                "{}: {} rows were never written",
                self.tmp.display(),
                self.rows_left
            );
        }
        let w = self.w.take().unwrap();
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("{}: cannot write", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.path.display()
            )
        })
    }
}

impl Drop for LogitsWriter {
    fn drop(&mut self) {
        if self.w.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A file being read: its header, then its rows chunk by chunk.
pub struct LogitsReader {
    path: PathBuf,
    r: BufReader<File>,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// The `n_chunk * n_ctx` tokens.
    pub tokens: Vec<u32>,
    chunks_read: usize,
}

impl LogitsReader {
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display();
        let f = File::open(path).with_context(|| format!("{p}: cannot open"))?;
        let len = f
            .metadata()
            .with_context(|| format!("{p}: cannot stat"))?
            .len();
        let mut r = BufReader::with_capacity(1 << 22, f);
        let mut head = [0u8; 20];
        r.read_exact(&mut head).map_err(|_| {
            anyhow::anyhow!("{p}: too short ({len} bytes) for a llama.cpp log-probabilities file")
        })?;
        if &head[..8] != MAGIC {
            bail!("{p}: not a llama.cpp log-probabilities file (no \"_logits_\" magic; write one with `shrink eval --save-logits` or `llama-perplexity --kl-divergence-base`)");
        }
        let n_ctx = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
        let n_vocab = i32::from_le_bytes(head[12..16].try_into().unwrap());
        let n_chunk = i32::from_le_bytes(head[16..20].try_into().unwrap());
        if n_ctx < 4 || n_vocab <= 0 || n_chunk <= 0 {
            bail!("{p}: bad header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}");
        }
        let (n_vocab, n_chunk) = (n_vocab as usize, n_chunk as usize);
        let want = 20u64
            + 4 * (n_ctx as u64 * n_chunk as u64)
            + 2 * (n_chunk as u64 * rows_per_chunk(n_ctx) as u64 * row_len(n_vocab) as u64);
        if len != want {
            bail!("{p}: {len} bytes, but its header (n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunk} chunks) needs {want}: the file is truncated or not from this format");
        }
        let mut tb = vec![0u8; 4 * n_ctx * n_chunk];
        r.read_exact(&mut tb)
            .with_context(|| format!("{p}: cannot read its tokens"))?;
        let mut tokens = Vec::with_capacity(n_ctx * n_chunk);
        for c in tb.chunks_exact(4) {
            let t = i32::from_le_bytes(c.try_into().unwrap());
            if t < 0 || t as usize >= n_vocab {
                bail!("{p}: token {t} is outside its vocabulary of {n_vocab}");
            }
            tokens.push(t as u32);
        }
        Ok(LogitsReader {
            path: path.into(),
            r,
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
            chunks_read: 0,
        })
    }

    /// Reads the next chunk's rows into `out` (resized to `rows_per_chunk * row_len`).
    pub fn next_chunk(&mut self, out: &mut Vec<u16>) -> Result<()> {
        if self.chunks_read == self.n_chunk {
            bail!(
                "{}: all {} chunks were read",
                self.path.display(),
                self.n_chunk
            );
        }
        let n = rows_per_chunk(self.n_ctx) * row_len(self.n_vocab);
        let mut b = vec![0u8; 2 * n];
        self.r.read_exact(&mut b).with_context(|| {
            format!(
                "{}: cannot read chunk {}",
                self.path.display(),
                self.chunks_read
            )
        })?;
        out.clear();
        out.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
        self.chunks_read += 1;
        Ok(())
    }
}
