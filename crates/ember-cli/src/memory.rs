//! How ember's process takes memory from the system: large blocks kept once freed, and backed
//! by 2 MiB pages.

use std::alloc::{GlobalAlloc, Layout, System};

/// Keeps freed memory in the process for the next allocation of its size.
///
/// A training step allocates and frees tensors of 100–400 MB (logits, embedding-sized gradients,
/// AdamW's moments). glibc serves every allocation above 32 MB with a fresh `mmap` and unmaps it
/// on free, so each such tensor page-faults and zeroes all its pages again, every step; freed
/// memory at the heap's top is trimmed and faulted back alike. Serving all from the heap and
/// never trimming it made training steps 20–35% faster here (gpt-tiny batch 8, gpt2-small
/// batch 2), for 4–10% more peak memory (`ember bench train` shows both). The trim threshold
/// −1 turns trimming off entirely (mallopt(3)); `c_int::MAX` would still trim a free top above
/// 2 GiB, which larger batches can free at once.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// Puts the heap's growth from now on on transparent huge pages ([`HugePages`]), for commands
/// that decode: call it before loading the model, whose weights then land there.
pub fn huge_pages_from_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings (under the allocator's own lock).
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
    HUGE_PAGES.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`HugePages`] advises the heap's growth ([`huge_pages_from_now`]).
static HUGE_PAGES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The system allocator, with the heap marked for transparent huge pages as it grows
/// (`madvise(MADV_HUGEPAGE)` over each stretch of 2 MiB pages the program break has passed
/// since the last advice; Linux with glibc only), where the kernel leaves that to the program
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, a common default) — what glibc
/// does itself under `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which a program cannot set for
/// itself once started.
/// Why: decoding streams ~500 MB of gpt2-small weights per token and is bound by memory
/// bandwidth; on 4 KiB pages the hardware prefetchers stop at every page boundary and each page
/// costs a TLB walk. Measured here (2 cores): summing 500 MB read 30.4–33.1 GB/s on 4 KiB pages
/// and 35.6–36.4 on 2 MiB pages; glibc's switch took decoding from 47.6–54.5 to 55.4–60.3
/// tokens/s, and this allocator from 45.1–47.8 to 48.4–52.3 (+7–13% in each of 4 alternated
/// pairs). The main thread's blocks come from that heap ([`keep_freed_memory`] sends even the
/// largest there), the weights among them.
///
/// Only after [`huge_pages_from_now`], which the decoding commands call: with it (and its
/// padding, below) on the whole heap from the start, training steps were slower (gpt2-small
/// batch 2 146.6–158.2 against 164.7–169.7 tokens/s, batch 8 178.6–184.6 against
/// 185.4–191.9, 3 alternated pairs). That call also makes the heap grow by at least 64 MiB at
/// a time (`M_TOP_PAD`, untouched address space until used): glibc writes the new top's header
/// into fresh memory before it can be advised, and a 2 MiB stretch holding such a touched page
/// stays on 4 KiB pages — with glibc's default padding (128 KiB) 383 of 485 MB of a decoding
/// run's heap were on huge pages, with 64 MiB 471. (glibc also commits that padding for each
/// new per-thread heap: address space, not resident memory.)
pub struct HugePages;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGE: usize = 2 << 20;

impl HugePages {
    /// Advises the heap between the last advised 2 MiB boundary and the current break.
    fn advise_heap_growth() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if HUGE_PAGES.load(std::sync::atomic::Ordering::Relaxed) {
            use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
            /// The end of the advised part of the heap; 0 until the first call.
            static ADVISED_TO: AtomicUsize = AtomicUsize::new(0);
            // SAFETY: sbrk(0) only reads the current break.
            let brk = unsafe { libc::sbrk(0) } as usize;
            let end = brk / HUGE_PAGE * HUGE_PAGE;
            if brk == usize::MAX {
                return; // sbrk's (void*)-1: no heap to advise.
            }
            // The heap is never trimmed ([`keep_freed_memory`]), so the break only grows.
            let from = ADVISED_TO.load(Relaxed);
            if from == 0 {
                // The heap below the first break seen is small and already in use.
                let _ = ADVISED_TO.compare_exchange(
                    0,
                    brk.next_multiple_of(HUGE_PAGE),
                    Relaxed,
                    Relaxed,
                );
            } else if end > from
                && ADVISED_TO
                    .compare_exchange(from, end, Relaxed, Relaxed)
                    .is_ok()
            {
                // SAFETY: the range lies inside the heap below its break; MADV_HUGEPAGE is a
                // hint that changes no contents. Its failure (an older kernel, THP compiled
                // out) leaves ordinary pages, so the result is ignored.
                unsafe {
                    libc::madvise(from as *mut libc::c_void, end - from, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
}

// SAFETY: every method forwards to `System` with the same arguments; the advice only hints.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let block = unsafe { System.alloc(layout) };
        Self::advise_heap_growth();
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let block = unsafe { System.alloc_zeroed(layout) };
        Self::advise_heap_growth();
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        Self::advise_heap_growth();
        moved
    }
}

/// This machine's physical memory in bytes (`MemTotal` of `/proc/meminfo`); `None` where that
/// is not known.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses to build a model of `params` f32 parameters on a CPU `device` when it cannot fit in
/// this machine's memory: the weights alone (4 bytes a parameter), or for `training` the
/// weights, their gradients and AdamW's two moments (16 bytes), before any activation. Why: the
/// allocation of a too-large model aborts the process with a trace, and a config with a
/// mistyped size (`emb_dim = 1000000`) should get a line that says why.
pub fn check_model_fits(
    params: usize,
    training: bool,
    device: &burn::prelude::Device,
) -> anyhow::Result<()> {
    let (needed, what) = model_bytes(params, training);
    check_bytes_fit(needed, &what, device)
}

/// Bytes a model of `params` f32 parameters needs before any activation (see
/// [`check_model_fits`]), and what they hold.
pub fn model_bytes(params: usize, training: bool) -> (u128, String) {
    let (bytes_per_param, what) = match training {
        true => (
            16,
            "training it (weights, gradients and AdamW's moments in f32)",
        ),
        false => (4, "its f32 weights"),
    };
    let what = format!("the model has {params} parameters: {what}");
    (params as u128 * bytes_per_param, what)
}

/// Refuses work on a CPU `device` that needs `needed` bytes, more than this machine has;
/// `what` says what takes them.
pub fn check_bytes_fit(
    needed: u128,
    what: &str,
    device: &burn::prelude::Device,
) -> anyhow::Result<()> {
    if !crate::device::is_cpu(device) {
        return Ok(());
    }
    match total_memory() {
        Some(total) => bytes_fit(needed, what, total),
        None => Ok(()),
    }
}

fn bytes_fit(needed: u128, what: &str, total: u64) -> anyhow::Result<()> {
    if needed > total as u128 {
        anyhow::bail!(
            "{what} needs {:.1} GB, more than this machine's {:.1} GB of memory (check the \
             model config's sizes)",
            needed as f64 / 1e9,
            total as f64 / 1e9
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_larger_than_memory_is_refused_with_its_size() {
        let gib = 1u64 << 30;
        let fits = |params, training, total| {
            let (needed, what) = model_bytes(params, training);
            bytes_fit(needed, &what, total)
        };
        // gpt2-small trains in 2 GiB (2.0 GB of state), not in 1 GiB.
        assert!(fits(124_439_808, true, 2 * gib).is_ok());
        let err = fits(124_439_808, true, gib).unwrap_err().to_string();
        assert!(
            err.contains("124439808 parameters") && err.contains("2.0 GB"),
            "{err}"
        );
        assert!(fits(124_439_808, false, gib).is_ok());
        assert!(fits(usize::MAX, false, u64::MAX).is_err());
    }

    #[test]
    fn this_machine_reports_its_memory() {
        if cfg!(target_os = "linux") {
            assert!(total_memory().is_some_and(|bytes| bytes > 1 << 20));
        }
    }
}
