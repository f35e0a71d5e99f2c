//! Keeping memory-mapped model files out of the resident set.
//!
//! Every tensor is read from a memory-mapped file and copied (dequantized) into an owned buffer.
//! The pages touched by the copy stay mapped into the process and count in its resident set
//! (`RssFile`) until the kernel needs the memory: a layer-by-layer run over a 6 GB f32 model
//! would show 6 GB of resident file pages at the end although it only ever needs one layer. After
//! each copy the source range is therefore released with `madvise(MADV_DONTNEED)`: the process
//! drops its mapping of those pages; the kernel's page cache keeps them, so reading the same
//! tensor again costs a page fault, not a disk read.
use memmap2::Mmap;
use std::ops::Range;

/// Releases the pages of `range` (bytes of `map`) from this process's resident set. Pages that
/// only partly overlap the range are kept, so other tensors' data is not touched. Best effort:
/// where the OS does not support it nothing happens.
pub fn release(map: &Mmap, range: Range<usize>) {
    const PAGE: usize = 4096;
    let start = range.start.div_ceil(PAGE) * PAGE;
    let end = (range.end.min(map.len()) / PAGE) * PAGE;
    if end <= start {
        return;
    }
    #[cfg(unix)]
    {
        // SAFETY: the map is a read-only mapping of a file that shrink never writes. Dropping
        // its pages from the process only means that the next access reads them again from the
        // page cache (or the file): no data can be lost or changed, and no reference into the
        // map is invalidated.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}
