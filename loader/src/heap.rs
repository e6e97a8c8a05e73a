//! Keeps the loader's resident heap near what it uses. glibc's allocator returns freed memory
//! to the kernel only from the top of the heap, and only past a threshold that it raises to
//! the size of the largest block it has mapped and freed; the loader frees a lot in bursts
//! (start-up's BTF parses; a whole ELF file read for its OpenSSL symbols; each selected
//! process's `/proc` files, read again for a minute), and would keep that heap for good. So
//! the thresholds are fixed, and the heap's free pages are handed back after such bursts.

/// Blocks this large or larger get a mapping of their own, unmapped when freed. Fixing it
/// also stops glibc raising it (and the trim threshold) after a large block is freed.
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Free memory at the top of the heap beyond this goes back to the kernel at each free.
const TRIM_THRESHOLD: libc::c_int = 128 * 1024;

/// Free heap (inside the heap, between blocks in use) that [`trim_if_slack`] hands back.
const SLACK_BYTES: usize = 1 << 20;

/// Fixes the allocator's thresholds; called first thing, before the allocations it is about.
pub fn fix_thresholds() {
    // SAFETY: mallopt only sets allocator parameters; no pointer is involved. It returns 0
    // when a value is refused, and then glibc's defaults stay: nothing to do about it.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Returns every free page of the heap to the kernel, wherever it lies.
pub fn trim() {
    // SAFETY: malloc_trim only releases free memory of glibc's allocator; no pointer is
    // touched.
    unsafe { libc::malloc_trim(0) };
}

/// [`trim`], when more than [`SLACK_BYTES`] of the heap are free: cheap to ask (a walk of the
/// free lists), so the event loop asks after each round of work.
pub fn trim_if_slack() {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free > SLACK_BYTES {
        trim();
    }
}
