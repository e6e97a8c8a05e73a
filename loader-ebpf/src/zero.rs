//! Zeroed values without `memset`. On this target LLVM lowers a zeroed array or struct of more
//! than a few bytes to a call of the byte-by-byte `memset` it links in: a BPF-to-BPF call and
//! a loop of one store per byte (a 64-byte buffer: ~200 instructions) on every run that makes
//! one. Word stores marked volatile, which LLVM cannot merge back into that call, do the same
//! in `size / 8` instructions.

use core::mem::MaybeUninit;

/// Zeroes `slot` in place and returns it (`T` 8-aligned, checked at compile time). In place,
/// because a zeroed value returned by value is copied to its final place, and LLVM turns that
/// copy of known zeros back into a `memset` call.
///
/// # Safety
/// `T` is valid when all zero: integers, arrays of them, and structs of those (no references,
/// function pointers or `NonZero`).
#[inline(always)]
pub unsafe fn zero<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    // The size of an 8-aligned type is a multiple of 8.
    const {
        assert!(core::mem::align_of::<T>() >= 8);
    }
    let words = slot.as_mut_ptr().cast::<u64>();
    // SAFETY: `T` is 8-aligned (asserted above), so `size_of::<T>() / 8` words cover it: every
    // store is in bounds and aligned, all its bytes are written before `assume_init_mut`, and
    // the caller's `T` is valid all zero.
    unsafe {
        for i in 0..core::mem::size_of::<T>() / 8 {
            core::ptr::write_volatile(words.add(i), 0);
        }
        slot.assume_init_mut()
    }
}

/// `N` bytes, 8-aligned (`N` a multiple of 8), so `zero` can clear them with word stores. All
/// zero is a valid value.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Words<const N: usize>(pub [u8; N]);

impl<const N: usize> Words<N> {
    /// True when every byte is zero, compared a word at a time.
    #[inline(always)]
    pub fn is_zero(&self) -> bool {
        const {
            assert!(N % 8 == 0);
        }
        let words = self.0.as_ptr().cast::<u64>();
        let mut any = 0;
        // SAFETY: `Words` is 8-aligned and N bytes long; N / 8 aligned u64 reads stay inside.
        unsafe {
            for i in 0..N / 8 {
                any |= words.add(i).read();
            }
        }
        any == 0
    }
}
