//! A byte stream read in large gulps, for the socket beneath a TLS stream that carries file data.
//!
//! rustls asks its transport for at most 4 KiB per read (`DeframerVecBuffer::prepare_read`), so
//! a TLS stream straight over a socket costs a read system call, a wake-up of the socket's
//! readiness and often a resize of rustls's buffer for every 4 KiB received. [`ReadAhead`] sits
//! between the two: it reads whatever the socket holds, up to [`READ_AHEAD`] bytes, in one call,
//! and hands rustls its small reads from memory. Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at most per system call.
pub const READ_AHEAD: usize = 64 * 1024;

/// A stream whose reads are served from a buffer filled [`READ_AHEAD`] bytes at a time.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Allocated on the first read that needs it: a connection that carries only small frames
    /// reads them through it too, but the memory is the same as one frame buffer.
    buffer: Vec<u8>,
    /// The unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, buffer: Vec::new(), start: 0, end: 0 }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            // A caller asking for as much as the buffer holds gains nothing from a copy.
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buffer.is_empty() {
                this.buffer = vec![0; READ_AHEAD];
            }
            let mut fill = ReadBuf::new(&mut this.buffer);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.start = 0;
            this.end = fill.filled().len();
        }
        // Nothing filled is the end of the stream, passed on as such.
        let count = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buffer[this.start..this.start + count]);
        this.start += count;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, parts)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream holding `total` bytes (each its offset mod 251) that yields them at most
    /// `per_read` at a time, counting its reads.
    struct Trickle {
        total: usize,
        sent: usize,
        per_read: usize,
        reads: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            self.reads += 1;
            let count = out.remaining().min(self.per_read).min(self.total - self.sent);
            let start = self.sent;
            let bytes: Vec<u8> = (start..start + count).map(|offset| (offset % 251) as u8).collect();
            out.put_slice(&bytes);
            self.sent += count;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_from_few_reads_of_the_stream() {
        let total = 1_000_000;
        let mut stream = ReadAhead::new(Trickle { total, sent: 0, per_read: usize::MAX, reads: 0 });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let count = stream.read(&mut chunk).await.unwrap();
            if count == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..count]);
        }
        assert_eq!(got.len(), total);
        assert!(got.iter().enumerate().all(|(offset, &byte)| byte == (offset % 251) as u8));
        // 16 reads of 64 KiB and the one that finds the end, not 245 of 4 KiB.
        assert_eq!(stream.get_ref().reads, total.div_ceil(READ_AHEAD) + 1);
    }

    #[tokio::test]
    async fn a_stream_that_yields_little_at_a_time_is_passed_on_as_it_comes() {
        let mut stream = ReadAhead::new(Trickle { total: 10_000, sent: 0, per_read: 3, reads: 0 });
        let mut chunk = [0u8; 4096];
        assert_eq!(stream.read(&mut chunk).await.unwrap(), 3);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 10_000 - 3);
        assert_eq!(rest[0], 3);
    }

    #[tokio::test]
    async fn large_reads_go_straight_to_the_stream_and_writes_pass_through() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut stream = ReadAhead::new(near);
        stream.write_all(b"to the far side").await.unwrap();
        stream.flush().await.unwrap();
        let mut heard = [0u8; 15];
        far.read_exact(&mut heard).await.unwrap();
        assert_eq!(&heard, b"to the far side");
        far.write_all(&[7u8; 100]).await.unwrap();
        let mut large = vec![0u8; 2 * READ_AHEAD];
        assert_eq!(stream.read(&mut large).await.unwrap(), 100);
        assert!(stream.buffer.is_empty(), "no buffer for a read that needs none");
        drop(far);
        assert_eq!(stream.read(&mut large).await.unwrap(), 0);
    }
}
