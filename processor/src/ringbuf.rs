//! A `BPF_MAP_TYPE_RINGBUF` consumer built on `mmap` alone.
//!
//! Written by hand rather than with `aya::maps::RingBuf` because aya wraps a received fd with
//! `MapData::from_fd`, which issues `bpf(BPF_OBJ_GET_INFO_BY_FD)`. The processor must make no
//! `bpf()` call at all (Kubernetes `RuntimeDefault` seccomp denies it without CAP_BPF), so the
//! loader sends the geometry and this module maps the buffer itself:
//! * consumer page: read-write, offset 0, one page; holds `consumer_pos`;
//! * producer page + data: read-only, offset one page, `page + 2 * size` bytes; the data area
//!   is mapped twice back to back, so a record that wraps is still contiguous.
//!
//! Each record starts with an 8-byte header: `u32 len` (bit 31 busy, bit 30 discarded) and a
//! `u32` page offset; records are 8-byte aligned.

use std::{
    num::NonZeroUsize,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER: u64 = 8;

/// Errors setting up the mapping.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring buffer geometry invalid: data size {data_size}, page size {page_size}")]
    Geometry { data_size: u32, page_size: u32 },
    #[error("mmap of the ring buffer {what} failed: {source}")]
    Mmap {
        what: &'static str,
        source: nix::Error,
    },
}

pub struct RingReader {
    fd: OwnedFd,
    consumer: NonNull<core::ffi::c_void>,
    producer: NonNull<core::ffi::c_void>,
    page_size: usize,
    data_size: usize,
    /// Records skipped because their header was inconsistent (counted, then resynchronised).
    pub corrupt_records: u64,
}

impl RingReader {
    pub fn new(fd: OwnedFd, data_size: u32, page_size: u32) -> Result<RingReader, RingError> {
        if !data_size.is_power_of_two()
            || !page_size.is_power_of_two()
            || page_size < 4096
            || data_size < page_size
        {
            return Err(RingError::Geometry {
                data_size,
                page_size,
            });
        }
        let (page, data) = (page_size as usize, data_size as usize);
        let consumer_len = NonZeroUsize::new(page).ok_or(RingError::Geometry {
            data_size,
            page_size,
        })?;
        let producer_len = NonZeroUsize::new(page + 2 * data).ok_or(RingError::Geometry {
            data_size,
            page_size,
        })?;
        // SAFETY: mapping a kernel ring buffer fd; the kernel validates offset and length and
        // we never access beyond the lengths requested here.
        let consumer = unsafe {
            mmap(
                None,
                consumer_len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(|source| RingError::Mmap {
            what: "consumer page",
            source,
        })?;
        // SAFETY: as above; the producer page and data area are mapped read-only.
        let producer = unsafe {
            mmap(
                None,
                producer_len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                page as i64,
            )
        };
        let producer = match producer {
            Ok(p) => p,
            Err(source) => {
                // SAFETY: unmapping exactly the mapping created above.
                let _ = unsafe { munmap(consumer, page) };
                return Err(RingError::Mmap {
                    what: "producer and data pages",
                    source,
                });
            }
        };
        Ok(RingReader {
            fd,
            consumer,
            producer,
            page_size: page,
            data_size: data,
            corrupt_records: 0,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped read-write for our lifetime, page-aligned, and the
        // kernel defines consumer_pos as the u64 at its start.
        unsafe { &*self.consumer.as_ptr().cast::<AtomicU64>() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the producer page is mapped read-only for our lifetime; producer_pos is the
        // u64 at its start; we only load it.
        unsafe { &*self.producer.as_ptr().cast::<AtomicU64>() }
    }

    /// Bytes the kernel has written and we have not consumed.
    pub fn pending_bytes(&self) -> u64 {
        self.producer_pos()
            .load(Ordering::Acquire)
            .wrapping_sub(self.consumer_pos().load(Ordering::Acquire))
    }

    /// Hands every committed record to `f`, then releases the space. Returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mask = (self.data_size - 1) as u64;
        let mut cons = self.consumer_pos().load(Ordering::Acquire);
        let mut n = 0;
        loop {
            let prod = self.producer_pos().load(Ordering::Acquire);
            if cons >= prod {
                break;
            }
            let offset = (cons & mask) as usize;
            // SAFETY: offset < data_size and the data area (2 * data_size bytes) starts one page
            // into the producer mapping, so the 8-byte header is in bounds.
            let header = unsafe {
                self.producer
                    .as_ptr()
                    .cast::<u8>()
                    .add(self.page_size + offset)
            };
            // SAFETY: aligned (records are 8-byte aligned) u32 in the mapping; the kernel
            // publishes it with a release store.
            let len_word =
                unsafe { (*header.cast::<std::sync::atomic::AtomicU32>()).load(Ordering::Acquire) };
            if len_word & BUSY_BIT != 0 {
                break;
            }
            let len = (len_word & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len as u64 + HEADER > self.data_size as u64 {
                // Cannot happen with a sane kernel; never read out of bounds, drop what is there.
                self.corrupt_records += 1;
                cons = prod;
                break;
            }
            if len_word & DISCARD_BIT == 0 {
                // SAFETY: header + 8 + len stays within the doubly mapped data area because
                // offset < data_size and len + 8 <= data_size.
                let sample =
                    unsafe { std::slice::from_raw_parts(header.add(HEADER as usize), len) };
                f(sample);
                n += 1;
            }
            cons += (len as u64 + HEADER + 7) & !7;
            self.consumer_pos().store(cons, Ordering::Release);
        }
        self.consumer_pos().store(cons, Ordering::Release);
        n
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the two mappings created in `new`, once.
        unsafe {
            let _ = munmap(self.consumer, self.page_size);
            let _ = munmap(self.producer, self.page_size + 2 * self.data_size);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reader against a ring laid out as the kernel lays it out, in a plain shared file
    //! (no wrap-around: the data area's second mapping is not reproduced).
    use std::{fs::File, os::unix::fs::FileExt};

    use super::*;

    const PAGE: u64 = 4096;

    struct FakeRing {
        file: File,
        data: u64,
        prod: u64,
    }

    impl FakeRing {
        fn new(data: u64) -> (FakeRing, RingReader) {
            let path = std::env::temp_dir().join(format!(
                "sonde-ringbuf-test-{}-{data}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("temp file");
            std::fs::remove_file(&path).expect("unlink temp file");
            file.set_len(2 * PAGE + 2 * data).expect("size");
            let fd = OwnedFd::from(file.try_clone().expect("dup"));
            let reader = RingReader::new(fd, data as u32, PAGE as u32).expect("map");
            (
                FakeRing {
                    file,
                    data,
                    prod: 0,
                },
                reader,
            )
        }

        /// Where the record at ring position `at` starts in the file (behind the consumer
        /// and producer pages).
        fn file_offset(&self, at: u64) -> u64 {
            2 * PAGE + (at & (self.data - 1))
        }

        /// Writes a record at the producer position; returns where it starts.
        fn push(&mut self, payload: &[u8], flags: u32) -> u64 {
            let at = self.prod;
            let mut header = (payload.len() as u32 | flags).to_le_bytes().to_vec();
            header.extend_from_slice(&0u32.to_le_bytes());
            let off = self.file_offset(at);
            self.file.write_all_at(&header, off).expect("header");
            self.file
                .write_all_at(payload, off + HEADER)
                .expect("payload");
            self.prod += (payload.len() as u64 + HEADER + 7) & !7;
            at
        }

        fn commit(&self, at: u64, len: usize) {
            let off = self.file_offset(at);
            self.file
                .write_all_at(&(len as u32).to_le_bytes(), off)
                .expect("commit");
        }

        fn publish(&self) {
            self.file
                .write_all_at(&self.prod.to_le_bytes(), PAGE)
                .expect("producer_pos");
        }

        fn consumer_pos(&self) -> u64 {
            read_consumer_pos(&self.file)
        }
    }

    fn read_consumer_pos(file: &File) -> u64 {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, 0).expect("consumer_pos");
        u64::from_le_bytes(b)
    }

    #[test]
    fn records_come_in_order_without_discarded_ones_and_a_busy_one_waits() {
        let (mut ring, mut reader) = FakeRing::new(64 * 1024);
        ring.push(b"first", 0);
        ring.push(b"discarded", DISCARD_BIT);
        ring.push(b"third record", 0);
        let third_end = ring.prod;
        let busy = ring.push(b"fourth", BUSY_BIT);
        ring.publish();

        let mut got = Vec::new();
        assert_eq!(reader.drain(|r| got.push(r.to_vec())), 2);
        assert_eq!(got, [b"first".to_vec(), b"third record".to_vec()]);
        assert_eq!(
            ring.consumer_pos(),
            third_end,
            "released up to the busy record"
        );

        ring.commit(busy, b"fourth".len());
        got.clear();
        assert_eq!(reader.drain(|r| got.push(r.to_vec())), 1);
        assert_eq!(got, [b"fourth".to_vec()]);
        assert_eq!(ring.consumer_pos(), ring.prod);
        assert_eq!(reader.drain(|_| panic!("nothing is left")), 0);
        assert_eq!(reader.corrupt_records, 0);
    }

    #[test]
    fn an_impossible_length_is_counted_and_skipped() {
        let (mut ring, mut reader) = FakeRing::new(16 * 1024);
        ring.push(b"ok", 0);
        let bad = ring.push(b"bad", 0);
        ring.publish();
        ring.file
            .write_all_at(&(64 * 1024u32).to_le_bytes(), ring.file_offset(bad))
            .expect("corrupt");
        let mut got = Vec::new();
        assert_eq!(reader.drain(|r| got.push(r.to_vec())), 1);
        assert_eq!(got, [b"ok".to_vec()]);
        assert_eq!(reader.corrupt_records, 1);
        assert_eq!(
            ring.consumer_pos(),
            ring.prod,
            "resynchronised at the producer"
        );
    }
}
