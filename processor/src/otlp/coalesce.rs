//! Write coalescing for the gRPC export connection. h2 sends a request body as HTTP/2 DATA
//! frames of the collector's `SETTINGS_MAX_FRAME_SIZE` (16 KiB unless it says otherwise) and
//! flushes its IO after each one, so a 1 MB export request became ~60 `writev` calls, each
//! waking the collector, which then preempted the exporter on its way out of the call
//! (`strace -c` on the exporter thread: 7,278 `writev` in 5 s against 166 for the same spans
//! over HTTP/protobuf, where hyper writes a body at once; `BENCHMARKS.md`). h2's frame
//! writer cannot be told to buffer more, and a `BufWriter` would not help: it writes out on
//! every flush.
//!
//! `Coalescing` holds what is written up to `HOLD_BYTES` and tells the flushes apart: h2
//! flushes once per frame while it is writing a body, and once more at the end of every poll
//! of the connection, when it has nothing left to write. So a flush that comes after a
//! frame's worth of writes (`PUT_OFF_AFTER`: a full DATA frame, alone or in TLS records) is
//! put off (the task is woken so the connection is polled again at once), and any other
//! flush writes out what is held: the full frames of one poll of the connection leave in one
//! `write` per `HOLD_BYTES`. A flush after a short write is never put off, so a writer that
//! flushes once and then waits for an answer (a TLS handshake, a request's last frame) is
//! not kept waiting. No flush is put off once the first held byte is `HOLD_TIME` old, and a
//! full buffer is written before more is taken.
//!
//! Hand-written because no crate does this: it depends on the flush pattern of h2 described
//! above (h2 0.4's `FramedWrite::flush`, `Streams::poll_complete` and `Connection::poll`);
//! a test drives a real h2 client and server through it, so an h2 that flushed otherwise
//! would fail it.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held at most before they are written: a quarter of a default 2,048-span request.
pub const HOLD_BYTES: usize = 256 * 1024;

/// Longest the first held byte waits: flushes put off this long write out whatever comes.
pub const HOLD_TIME: Duration = Duration::from_millis(1);

/// Bytes written since the last flush from which that flush may be put off: HTTP/2's smallest
/// allowed maximum frame size, so every full DATA frame is held and nothing shorter is.
pub const PUT_OFF_AFTER: usize = 16 * 1024;

/// An IO whose writes are gathered as the module says; reads pass through.
pub struct Coalescing<T> {
    inner: T,
    held: Vec<u8>,
    /// Bytes at the front of `held` already written (a write the socket took in part).
    sent: usize,
    /// Bytes taken since the last flush.
    since_flush: usize,
    /// When the first byte now held was taken.
    first_held: Option<Instant>,
    hold_time: Duration,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Coalescing<T> {
        Coalescing {
            inner,
            held: Vec::new(),
            sent: 0,
            since_flush: 0,
            first_held: None,
            hold_time: HOLD_TIME,
        }
    }

    fn unsent(&self) -> usize {
        self.held.len() - self.sent
    }

    fn hold(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.held.extend_from_slice(bytes);
        self.since_flush += bytes.len();
        self.first_held.get_or_insert_with(Instant::now);
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        self.first_held = None;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: writes out what is held when they would not fit.
    /// True when the bytes are to be held, false when they are to go straight to the socket
    /// (nothing held, and at least a buffer's worth).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.unsent() + len > HOLD_BYTES {
            ready!(self.poll_write_held(cx))?;
        }
        Poll::Ready(Ok(len < HOLD_BYTES))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !ready!(this.poll_room(cx, buf.len()))? {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.hold(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.hold(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        // h2 then hands a frame's header and payload over together (no copy into its own
        // buffer first); they are copied here once.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unsent() > 0 {
            let young = this
                .first_held
                .is_some_and(|t| t.elapsed() < this.hold_time);
            if this.since_flush >= PUT_OFF_AFTER && young {
                // A flush after a full frame: put off. The wake makes sure the connection is
                // polled again, and that poll's closing flush writes this out.
                this.since_flush = 0;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_write_held(cx))?;
        }
        this.since_flush = 0;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures::task::{ArcWake, waker};

    use super::*;

    /// A socket that records each write it takes, and takes at most `accept` bytes of one
    /// (`None`: all), or none at all (`Pending`) while `blocked`.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        accept: Option<usize>,
        blocked: bool,
        /// Blocks once this many more writes were taken.
        block_after: Option<usize>,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.block_after == Some(0) {
                this.blocked = true;
            }
            if this.blocked {
                return Poll::Pending;
            }
            if let Some(left) = this.block_after.as_mut() {
                *left -= 1;
            }
            let n = this.accept.unwrap_or(usize::MAX).min(buf.len());
            this.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Harness {
        io: Coalescing<Socket>,
        wakes: Arc<Wakes>,
    }

    impl Harness {
        /// Held bytes wait as long as the test needs (a slow test host cannot end a hold
        /// early), except where `hold_time` is the point.
        fn new() -> Harness {
            let mut io = Coalescing::new(Socket::default());
            io.hold_time = Duration::from_secs(3600);
            Harness {
                io,
                wakes: Arc::default(),
            }
        }
        fn write(&mut self, bytes: &[u8]) -> Poll<io::Result<usize>> {
            let w = waker(Arc::clone(&self.wakes));
            Pin::new(&mut self.io).poll_write(&mut Context::from_waker(&w), bytes)
        }
        fn write_frame(&mut self, header: &[u8], payload: &[u8]) -> Poll<io::Result<usize>> {
            let w = waker(Arc::clone(&self.wakes));
            let bufs = [io::IoSlice::new(header), io::IoSlice::new(payload)];
            Pin::new(&mut self.io).poll_write_vectored(&mut Context::from_waker(&w), &bufs)
        }
        fn flush(&mut self) -> Poll<io::Result<()>> {
            let w = waker(Arc::clone(&self.wakes));
            Pin::new(&mut self.io).poll_flush(&mut Context::from_waker(&w))
        }
        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::Relaxed)
        }
        fn written(&self) -> Vec<u8> {
            self.io.inner.writes.concat()
        }
        fn write_sizes(&self) -> Vec<usize> {
            self.io.inner.writes.iter().map(Vec::len).collect()
        }
    }

    fn frame(i: u8) -> (Vec<u8>, Vec<u8>) {
        (vec![i; 9], vec![i; 16 * 1024])
    }

    /// h2's pattern for one request body: a flush after each frame, then one at the end of
    /// the connection's poll, and one more in the poll the wake brings. The frames go out in
    /// one write, in order, at that last flush.
    #[test]
    fn the_frames_of_one_poll_leave_in_one_write_at_the_closing_flush() {
        let mut h = Harness::new();
        let mut expected = Vec::new();
        for i in 0..8 {
            let (header, payload) = frame(i);
            assert!(
                matches!(h.write_frame(&header, &payload), Poll::Ready(Ok(n)) if n == 9 + 16 * 1024)
            );
            expected.extend_from_slice(&header);
            expected.extend_from_slice(&payload);
            assert!(matches!(h.flush(), Poll::Ready(Ok(()))));
        }
        assert!(
            h.write_sizes().is_empty(),
            "held through the flushes between frames"
        );
        assert_eq!(
            h.wakes(),
            8,
            "each put-off flush makes sure of another poll"
        );
        assert!(matches!(h.flush(), Poll::Ready(Ok(()))));
        assert_eq!(h.write_sizes(), [expected.len()]);
        assert_eq!(h.written(), expected);
        assert_eq!(h.io.inner.flushes, 1);
        // Nothing held: a flush goes straight through, and wakes nothing.
        assert!(matches!(h.flush(), Poll::Ready(Ok(()))));
        assert_eq!(h.write_sizes().len(), 1);
        assert_eq!(h.wakes(), 8);
    }

    /// A flush after a short write is never put off (a TLS handshake writes a few hundred
    /// bytes, flushes once and waits for the answer): it writes out what is held before it
    /// too, in order.
    #[test]
    fn a_flush_after_a_short_write_writes_at_once() {
        let mut h = Harness::new();
        assert!(h.write(b"client hello").is_ready());
        assert!(matches!(h.flush(), Poll::Ready(Ok(()))));
        assert_eq!(h.written(), b"client hello");
        assert_eq!(h.wakes(), 0);

        // A request's full frames are held; its short last frame goes out with them.
        let (header, payload) = frame(5);
        assert!(h.write_frame(&header, &payload).is_ready());
        assert!(h.flush().is_ready());
        assert_eq!(h.write_sizes(), [12]);
        assert!(h.write_frame(&[6u8; 9], &[6u8; 100]).is_ready());
        assert!(h.flush().is_ready());
        let last = [6u8; 109];
        assert_eq!(
            h.written(),
            [&b"client hello"[..], &header, &payload, &last].concat()
        );
        assert_eq!(h.write_sizes(), [12, 9 + 16 * 1024 + 109]);
        assert_eq!(h.wakes(), 1, "only the put-off flush wakes");
    }

    /// Closing the connection writes what is held first; a large write while bytes are held
    /// goes after them.
    #[test]
    fn shutdown_and_large_writes_keep_the_order() {
        let mut h = Harness::new();
        let (header, payload) = frame(8);
        assert!(h.write_frame(&header, &payload).is_ready());
        let big = vec![9u8; HOLD_BYTES];
        assert!(matches!(h.write(&big), Poll::Ready(Ok(n)) if n == HOLD_BYTES));
        assert_eq!(h.write_sizes(), [9 + 16 * 1024, HOLD_BYTES]);
        assert!(h.write(b"goaway").is_ready());
        let w = waker(Arc::clone(&h.wakes));
        assert!(matches!(
            Pin::new(&mut h.io).poll_shutdown(&mut Context::from_waker(&w)),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            h.written(),
            [&header[..], &payload, &big, b"goaway"].concat()
        );
        assert_eq!(h.io.unsent(), 0);
    }

    /// Counts the writes that reach the pipe.
    struct Counted<T> {
        inner: T,
        writes: Arc<AtomicUsize>,
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.writes.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
        }
    }

    /// One request with a `body` from a real h2 client, its writes counted, `coalescing` or
    /// not, to a real h2 server with windows as large as collectors' (hyper's: 1 MiB and
    /// more); returns the body the server got and the number of writes.
    async fn h2_request(body: bytes::Bytes, coalescing: bool) -> (Vec<u8>, usize) {
        let (client_io, server_io) = tokio::io::duplex(8 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            inner: client_io,
            writes: Arc::clone(&writes),
        };
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(8 << 20)
                .initial_connection_window_size(8 << 20)
                .handshake::<_, bytes::Bytes>(server_io)
                .await
                .expect("server handshake");
            let (request, mut respond) = conn.accept().await.expect("a request").expect("h2");
            // The request is read in a task of its own: the connection is driven only by
            // polling `accept`, which goes on until the client leaves.
            let handler = tokio::spawn(async move {
                let mut body = request.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("body");
                    let _ = body.flow_control().release_capacity(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                respond
                    .send_response(http::Response::new(()), true)
                    .expect("response");
                got
            });
            while let Some(Ok(_)) = conn.accept().await {}
            handler.await.expect("request handler")
        });
        let send = async move {
            let (mut client, connection) = if coalescing {
                let io: Box<dyn Io> = Box::new(Coalescing::new(counted));
                h2::client::handshake(io).await
            } else {
                let io: Box<dyn Io> = Box::new(counted);
                h2::client::handshake(io).await
            }
            .expect("client handshake");
            let driving = tokio::spawn(async move {
                let _ = connection.await;
            });
            let request = http::Request::post("http://collector/")
                .body(())
                .expect("request");
            let (response, mut stream) = client.send_request(request, false).expect("send");
            stream.send_data(body, true).expect("body");
            let response = response.await.expect("response");
            assert_eq!(response.status(), http::StatusCode::OK);
            // The connection ends once no handle to it or its stream is left.
            drop((response, stream, client));
            driving.await.expect("connection task");
        };
        send.await;
        let got = server.await.expect("server task");
        (got, writes.load(Ordering::Relaxed))
    }

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    /// h2 itself, through this wrapper: a 1 MiB request body arrives whole and in order, in a
    /// handful of writes, where the same client on the bare pipe makes one or more per 16 KiB
    /// frame. Fails if h2 stops flushing as the module doc says (bytes stranded: the request
    /// never completes; or no fewer writes).
    #[test]
    fn a_real_h2_request_body_leaves_in_a_few_writes() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let body = bytes::Bytes::from(body);
        let within = |coalescing| {
            let request = h2_request(body.clone(), coalescing);
            runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(20), request).await })
                .expect("the request completes (no bytes stranded)")
        };
        let (got_bare, bare) = within(false);
        let (got, coalesced) = within(true);
        assert_eq!(got_bare, body);
        assert_eq!(got, body);
        assert!(
            bare >= 64,
            "h2 alone: one write or more per 16 KiB frame, {bare}"
        );
        assert!(
            coalesced <= 12,
            "{coalesced} writes through Coalescing (h2 alone: {bare})"
        );
    }

    /// A full buffer is written before more is taken: no write is ever larger than
    /// `HOLD_BYTES` unless it came that large, and the bytes keep their order.
    #[test]
    fn a_full_buffer_is_written_before_more_is_held() {
        let mut h = Harness::new();
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let (header, payload) = frame(i);
            assert!(h.write_frame(&header, &payload).is_ready());
            expected.extend_from_slice(&header);
            expected.extend_from_slice(&payload);
            assert!(h.flush().is_ready());
        }
        let sizes = h.write_sizes();
        let frame_len = 9 + 16 * 1024;
        assert_eq!(
            sizes,
            vec![(HOLD_BYTES / frame_len) * frame_len; 40 / (HOLD_BYTES / frame_len)]
        );
        assert!(h.flush().is_ready());
        assert_eq!(h.written(), expected);

        // A write of a buffer's worth or more with nothing held goes straight to the socket.
        let big = vec![7u8; HOLD_BYTES];
        assert!(matches!(h.write(&big), Poll::Ready(Ok(n)) if n == HOLD_BYTES));
        assert_eq!(h.write_sizes().last(), Some(&HOLD_BYTES));
        assert_eq!(h.io.unsent(), 0);
    }

    /// Held bytes wait `HOLD_TIME` at most: a flush after that writes them even when a write
    /// came in between.
    #[test]
    fn nothing_is_held_longer_than_the_hold_time() {
        let mut h = Harness::new();
        let (first, second) = (frame(1), frame(2));
        assert!(h.write_frame(&first.0, &first.1).is_ready());
        assert!(h.flush().is_ready());
        assert!(h.write_sizes().is_empty());
        // The first held byte is now older than the hold time.
        h.io.hold_time = Duration::ZERO;
        assert!(h.write_frame(&second.0, &second.1).is_ready());
        assert!(h.flush().is_ready());
        assert_eq!(h.written(), [first.0, first.1, second.0, second.1].concat());
    }

    /// A socket that takes part of a write, or none for now, loses and repeats nothing.
    #[test]
    fn partial_and_refused_writes_resume_where_they_stopped() {
        let mut h = Harness::new();
        h.io.inner.accept = Some(1000);
        let (header, payload) = frame(1);
        assert!(h.write_frame(&header, &payload).is_ready());
        assert!(h.flush().is_ready(), "put off");
        // The socket takes one write, then is full: a part is written, the rest waits.
        h.io.inner.block_after = Some(1);
        assert!(h.flush().is_pending(), "the socket is full");
        assert_eq!(h.write_sizes(), [1000]);
        h.io.inner.block_after = None;
        h.io.inner.blocked = false;
        assert!(matches!(h.flush(), Poll::Ready(Ok(()))));
        let mut expected = header.clone();
        expected.extend_from_slice(&payload);
        assert_eq!(h.written(), expected);
        assert!(h.write_sizes().iter().all(|&n| n <= 1000));
        assert_eq!(h.io.unsent(), 0);

        // A write that must wait for room waits (Pending), and is then taken whole.
        h.io.inner.accept = None;
        let fill = vec![3u8; HOLD_BYTES - 10];
        assert!(h.write(&fill).is_ready());
        h.io.inner.blocked = true;
        assert!(h.write(&[4u8; 20]).is_pending());
        h.io.inner.blocked = false;
        assert!(matches!(h.write(&[4u8; 20]), Poll::Ready(Ok(20))));
        assert_eq!(h.io.unsent(), 20);
    }
}
