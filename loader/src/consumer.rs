//! The HTTP event ring's consumer position, as the loader checks it before each hand-over.
//!
//! The processor maps the consumer page read-write (it must, to release space), so a
//! compromised processor can park `consumer_pos` anywhere: past the producer, the kernel then
//! sees a "full" ring and its successor waits for records that never come. Before a processor
//! receives the ring, the loader walks the records from the consumer position to the producer
//! position the way the kernel wrote them: 8-byte aligned, no more than the data area behind the
//! producer, and every header's page offset the one the kernel stores for that place (see
//! `bpf_ringbuf_rec_pg_off`). A position that passes is left alone, so events written while no
//! processor ran are still delivered; any other is reset to the producer position.
//!
//! The loader maps the consumer page read-write and the producer page and data area read-only
//! (the kernel refuses a writable mapping of those, to the loader as to the processor).

use std::{
    num::NonZeroUsize,
    os::fd::BorrowedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Context, Result, bail};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER: u64 = 8;
/// Pages of `struct bpf_ringbuf` before its data area: the bookkeeping page, the consumer page
/// and the producer page. A record header's page offset counts from the structure's start.
const DATA_PAGE_OFFSET: u64 = 3;

/// The loader's mappings of the ring's positions and data.
pub struct ConsumerGuard {
    consumer: NonNull<core::ffi::c_void>,
    producer: NonNull<core::ffi::c_void>,
    page_size: usize,
    data_size: usize,
}

/// What a check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The consumer position is one the kernel could have left: kept.
    Kept { pending_bytes: u64 },
    /// It was not: reset from `from` to the producer position `to`.
    Reset { from: u64, to: u64 },
}

impl ConsumerGuard {
    /// Maps the ring whose fd is `fd` (data area `data_size` bytes).
    pub fn map(fd: BorrowedFd<'_>, data_size: u32) -> Result<ConsumerGuard> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(4096);
        let data = data_size as usize;
        if !data.is_power_of_two() || data < page {
            bail!("ring buffer data size {data_size} is not a power of two of at least a page");
        }
        let consumer_len = NonZeroUsize::new(page).context("page size")?;
        let producer_len = NonZeroUsize::new(page + 2 * data).context("ring size")?;
        // SAFETY: mapping a kernel ring buffer fd at the offsets and lengths the kernel defines
        // for it; the kernel validates both, and nothing is accessed beyond these lengths.
        let consumer = unsafe {
            mmap(
                None,
                consumer_len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .context("mapping the ring buffer's consumer page")?;
        // SAFETY: as above, read-only, one page in.
        let producer = unsafe {
            mmap(
                None,
                producer_len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd,
                page as i64,
            )
        };
        let producer = match producer {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping exactly the mapping made above, once.
                let _ = unsafe { munmap(consumer, page) };
                return Err(e).context("mapping the ring buffer's producer page and data");
            }
        };
        Ok(ConsumerGuard {
            consumer,
            producer,
            page_size: page,
            data_size: data,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped read-write for our lifetime and page-aligned;
        // the kernel defines consumer_pos as the u64 at its start.
        unsafe { &*self.consumer.as_ptr().cast::<AtomicU64>() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the producer page is mapped read-only for our lifetime; producer_pos is the
        // u64 at its start; it is only loaded.
        unsafe { &*self.producer.as_ptr().cast::<AtomicU64>() }
    }

    /// The record header at data offset `offset` (< data size): its length word and page
    /// offset.
    fn header(&self, offset: usize) -> (u32, u32) {
        // SAFETY: offset < data_size and the data area starts one page into the producer
        // mapping, which is page + 2 * data_size long: both 4-byte words are in bounds and
        // 8-byte aligned (offset is a multiple of 8). The kernel publishes them atomically.
        unsafe {
            let base = self
                .producer
                .as_ptr()
                .cast::<u8>()
                .add(self.page_size + offset);
            (
                (*base.cast::<AtomicU32>()).load(Ordering::Acquire),
                (*base.add(4).cast::<AtomicU32>()).load(Ordering::Acquire),
            )
        }
    }

    /// Whether records starting at `cons` lead, header by header, to `prod` (or to a record
    /// still being written).
    fn walks_to_producer(&self, cons: u64, prod: u64) -> bool {
        if cons > prod || prod - cons > self.data_size as u64 || !cons.is_multiple_of(HEADER) {
            return false;
        }
        let mask = (self.data_size - 1) as u64;
        let shift = self.page_size.trailing_zeros();
        let mut pos = cons;
        while pos < prod {
            let offset = (pos & mask) as usize;
            let (len_word, pg_off) = self.header(offset);
            if u64::from(pg_off) != DATA_PAGE_OFFSET + ((offset as u64) >> shift) {
                return false;
            }
            if len_word & BUSY_BIT != 0 {
                // A record the kernel is still writing, at a place a record starts.
                return true;
            }
            let len = u64::from(len_word & !(BUSY_BIT | DISCARD_BIT));
            let step = (len + HEADER + 7) & !7;
            if step > prod - pos {
                return false;
            }
            pos += step;
        }
        pos == prod
    }

    /// Checks the consumer position before a hand-over; resets it to the producer position
    /// unless the kernel could have left it there.
    pub fn check_and_reset(&self) -> Check {
        let prod = self.producer_pos().load(Ordering::Acquire);
        let cons = self.consumer_pos().load(Ordering::Acquire);
        if self.walks_to_producer(cons, prod) {
            Check::Kept {
                pending_bytes: prod - cons,
            }
        } else {
            self.consumer_pos().store(prod, Ordering::Release);
            Check::Reset {
                from: cons,
                to: prod,
            }
        }
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the two mappings made in `map`, once.
        unsafe {
            let _ = munmap(self.consumer, self.page_size);
            let _ = munmap(self.producer, self.page_size + 2 * self.data_size);
        }
    }
}
