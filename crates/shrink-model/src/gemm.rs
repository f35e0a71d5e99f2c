//! Optional oneMKL matmul backend, loaded at run time.
//!
//! shrink builds and runs without MKL: every matmul then stays f32 through faer. Where
//! `libmkl_rt.so.2` can be loaded (from `$SHRINK_MKL`, a file or a folder; then
//! `third_party/mkl/lib` under the current directory, as `scripts/fetch-mkl` installs it; then the
//! loader's search path), this module exposes `cblas_sgemm` (f32) and `cblas_gemm_bf16bf16f32`
//! (bf16 inputs, f32 accumulation and output; MKL picks AVX512-BF16 or AMX kernels where the CPU
//! has them). No GEMM is written here: only the loading, the bf16 rounding of inputs and thin
//! row-major wrappers.
use std::ffi::{c_char, c_float, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

#[link(name = "dl")]
extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_float,
    *const f32,
    c_int,
    *const f32,
    c_int,
    c_float,
    *mut f32,
    c_int,
);
type Bf16GemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_float,
    *const u16,
    c_int,
    *const u16,
    c_int,
    c_float,
    *mut f32,
    c_int,
);

/// The loaded library's entry points.
pub struct Mkl {
    /// Where it was loaded from.
    pub path: String,
    sgemm: SgemmFn,
    gemm_bf16: Bf16GemmFn,
}

fn try_open(p: &str) -> *mut c_void {
    let Ok(c) = CString::new(p) else {
        return std::ptr::null_mut();
    };
    // SAFETY: dlopen with a valid NUL-terminated string.
    unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(s) = std::env::var("SHRINK_MKL") {
        let p = PathBuf::from(s);
        if p.is_file() {
            return vec![p];
        }
        dirs.push(p);
    }
    dirs.push(PathBuf::from("third_party/mkl/lib"));
    if let Ok(exe) = std::env::current_exe() {
        // target/release/shrink -> repository root
        if let Some(root) = exe.ancestors().nth(3) {
            dirs.push(root.join("third_party/mkl/lib"));
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        for name in ["libmkl_rt.so.2", "libmkl_rt.so"] {
            let f = d.join(name);
            if f.is_file() {
                out.push(f);
            }
        }
    }
    out.push(PathBuf::from("libmkl_rt.so.2"));
    out.push(PathBuf::from("libmkl_rt.so"));
    out
}

fn load() -> Option<Mkl> {
    if std::env::var_os("SHRINK_NO_MKL").is_some() {
        return None;
    }
    for p in candidates() {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The threading layer needs Intel OpenMP; preload it from the same folder when there.
            let omp: &Path = &dir.join("libiomp5.so");
            if omp.is_file() {
                try_open(&omp.to_string_lossy());
            }
        }
        let h = try_open(&p.to_string_lossy());
        if h.is_null() {
            continue;
        }
        // SAFETY: symbols looked up by name in a loaded library; types per MKL's cblas header.
        unsafe {
            let s = dlsym(h, c"cblas_sgemm".as_ptr());
            let b = dlsym(h, c"cblas_gemm_bf16bf16f32".as_ptr());
            if s.is_null() || b.is_null() {
                continue;
            }
            return Some(Mkl {
                path: p.to_string_lossy().into_owned(),
                sgemm: std::mem::transmute::<*mut c_void, SgemmFn>(s),
                gemm_bf16: std::mem::transmute::<*mut c_void, Bf16GemmFn>(b),
            });
        }
    }
    None
}

/// oneMKL, if it can be loaded (once per process).
pub fn mkl() -> Option<&'static Mkl> {
    static M: OnceLock<Option<Mkl>> = OnceLock::new();
    M.get_or_init(load).as_ref()
}

/// Whether the CPU reports AVX512-BF16 and AMX-BF16 (from /proc/cpuinfo; false elsewhere).
pub fn cpu_bf16() -> (bool, bool) {
    let s = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = s
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("")
        .to_string();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    (has("avx512_bf16"), has("amx_bf16"))
}

/// f32 to bf16 bits, round to nearest even.
pub fn to_bf16(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

fn check(m: usize, n: usize, k: usize, a: usize, b: usize, c: usize) {
    assert!(
        a >= m * k && b >= k * n && c >= m * n,
        "gemm: buffer too small"
    );
    assert!(
        m.max(n).max(k) < c_int::MAX as usize,
        "gemm: dimension too large"
    );
}

impl Mkl {
    /// C[m,n] = A[m,k] · B, row-major; B is `[k,n]`, or `[n,k]` when `b_t` (C = A B^T).
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        b_t: bool,
        c: &mut [f32],
    ) {
        check(m, n, k, a.len(), b.len(), c.len());
        let (tb, ldb) = if b_t { (TRANS, k) } else { (NO_TRANS, n) };
        // SAFETY: sizes checked above; row-major leading dimensions match the slices.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                tb,
                m as c_int,
                n as c_int,
                k as c_int,
                1.0,
                a.as_ptr(),
                k as c_int,
                b.as_ptr(),
                ldb as c_int,
                0.0,
                c.as_mut_ptr(),
                n as c_int,
            )
        }
    }

    /// As [`Mkl::sgemm`] with bf16 inputs (bits) and f32 accumulation; `beta` 1 adds to C.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[u16],
        a_t: bool,
        b: &[u16],
        b_t: bool,
        beta: f32,
        c: &mut [f32],
    ) {
        check(m, n, k, a.len(), b.len(), c.len());
        let (ta, lda) = if a_t { (TRANS, m) } else { (NO_TRANS, k) };
        let (tb, ldb) = if b_t { (TRANS, k) } else { (NO_TRANS, n) };
        // SAFETY: sizes checked above; row-major leading dimensions match the slices.
        unsafe {
            (self.gemm_bf16)(
                ROW_MAJOR,
                ta,
                tb,
                m as c_int,
                n as c_int,
                k as c_int,
                1.0,
                a.as_ptr(),
                lda as c_int,
                b.as_ptr(),
                ldb as c_int,
                beta,
                c.as_mut_ptr(),
                n as c_int,
            )
        }
    }
}

/// Process-wide matmul precision for [`crate::tensor::linear`]: false = f32 through faer (the
/// exact path, default), true = bf16 inputs with f32 accumulation through oneMKL.
static BF16: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks for bf16 linears; returns whether they are on (oneMKL loaded), printing a one-line
/// notice when it falls back to f32.
pub fn set_bf16(on: bool) -> bool {
    let ok = on && mkl().is_some();
    if on && !ok {
        eprintln!("note: --precision bf16 asked, oneMKL not found (scripts/fetch-mkl or SHRINK_MKL): using f32");
    }
    BF16.store(ok, std::sync::atomic::Ordering::Relaxed);
    ok
}

/// The bf16 backend when it is switched on.
pub fn bf16_backend() -> Option<&'static Mkl> {
    if BF16.load(std::sync::atomic::Ordering::Relaxed) {
        mkl()
    } else {
        None
    }
}
