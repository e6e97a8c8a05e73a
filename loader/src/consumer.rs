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
    os::fd::{AsFd, BorrowedFd, OwnedFd},
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

/// The loader's mapping of the ring's consumer page, and what it needs to map the producer
/// page and data area for a check.
///
/// Only the consumer page stays mapped. The producer page and the data area (twice the data
/// size: 16 MiB with the default 8 MiB ring) are mapped for the length of one check and
/// unmapped after it: the kernel inserts a ring buffer's pages when it is mapped, so a lasting
/// mapping would count the whole ring in the loader's resident set between hand-overs.
pub struct ConsumerGuard {
    consumer: NonNull<core::ffi::c_void>,
    ring: OwnedFd,
    page_size: usize,
    data_size: usize,
}

/// The producer page and data area, mapped read-only for one check.
struct ProducerView {
    producer: NonNull<core::ffi::c_void>,
    len: usize,
}

impl Drop for ProducerView {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `ConsumerGuard::producer_view`, once.
        let _ = unsafe { munmap(self.producer, self.len) };
    }
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
    /// Maps the consumer page of the ring whose fd is `fd` (data area `data_size` bytes), and
    /// maps its producer page and data once to prove they can be.
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
        let ring = fd
            .try_clone_to_owned()
            .context("duplicating the ring buffer fd")?;
        // SAFETY: mapping a kernel ring buffer fd at the offset and length the kernel defines
        // for its consumer page; the kernel validates both, and nothing is accessed beyond it.
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
        let guard = ConsumerGuard {
            consumer,
            ring,
            page_size: page,
            data_size: data,
        };
        drop(guard.producer_view()?);
        Ok(guard)
    }

    /// Maps the producer page and the data area (twice) read-only, until the view drops.
    fn producer_view(&self) -> Result<ProducerView> {
        let len = self.page_size + 2 * self.data_size;
        let producer_len = NonZeroUsize::new(len).context("ring size")?;
        // SAFETY: as for the consumer page, read-only, one page in, at the length the kernel
        // defines for the producer page and the doubly mapped data area.
        let producer = unsafe {
            mmap(
                None,
                producer_len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                self.ring.as_fd(),
                self.page_size as i64,
            )
        }
        .context("mapping the ring buffer's producer page and data")?;
        Ok(ProducerView { producer, len })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped read-write for our lifetime and page-aligned;
        // the kernel defines consumer_pos as the u64 at its start.
        unsafe { &*self.consumer.as_ptr().cast::<AtomicU64>() }
    }

    fn producer_pos<'v>(&self, view: &'v ProducerView) -> &'v AtomicU64 {
        // SAFETY: the producer page is mapped read-only for the view's lifetime; producer_pos
        // is the u64 at its start; it is only loaded.
        unsafe { &*view.producer.as_ptr().cast::<AtomicU64>() }
    }

    /// The record header at data offset `offset` (< data size): its length word and page
    /// offset.
    fn header(&self, view: &ProducerView, offset: usize) -> (u32, u32) {
        // SAFETY: offset < data_size and the data area starts one page into the producer
        // mapping, which is page + 2 * data_size long: both 4-byte words are in bounds and
        // 8-byte aligned (offset is a multiple of 8). The kernel publishes them atomically.
        unsafe {
            let base = view
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
    fn walks_to_producer(&self, view: &ProducerView, cons: u64, prod: u64) -> bool {
        if cons > prod || prod - cons > self.data_size as u64 || !cons.is_multiple_of(HEADER) {
            return false;
        }
        let mask = (self.data_size - 1) as u64;
        let shift = self.page_size.trailing_zeros();
        let mut pos = cons;
        while pos < prod {
            let offset = (pos & mask) as usize;
            let (len_word, pg_off) = self.header(view, offset);
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
    /// unless the kernel could have left it there. Fails only when the producer page and data
    /// cannot be mapped for the check.
    pub fn check_and_reset(&self) -> Result<Check> {
        let view = self.producer_view()?;
        let prod = self.producer_pos(&view).load(Ordering::Acquire);
        let cons = self.consumer_pos().load(Ordering::Acquire);
        Ok(if self.walks_to_producer(&view, cons, prod) {
            Check::Kept {
                pending_bytes: prod - cons,
            }
        } else {
            self.consumer_pos().store(prod, Ordering::Release);
            Check::Reset {
                from: cons,
                to: prod,
            }
        })
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the consumer page mapped in `map`, once.
        let _ = unsafe { munmap(self.consumer, self.page_size) };
    }
}
