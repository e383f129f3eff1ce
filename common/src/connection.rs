//! A framed connection over any byte stream (in practice a TLS stream): `read_frame` and
//! `write_frame`, after mini-redis's `Connection`.
//!
//! A clean end of stream between frames is `Ok(None)`; an end in the middle of a frame is an
//! error. The read buffer never holds more than one maximum frame plus one read's worth,
//! because the decoder refuses a declared length above the maximum before waiting for it.
//! A side that expects only small frames (a server reading a stranger's request) lowers that
//! maximum with [`Connection::limit_frames`], and a side that must not wait on a peer forever
//! bounds every write with [`Connection::set_write_timeout`]. Beneath a TLS stream that
//! carries file data, the socket is read in large gulps ([`read_ahead`]).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use gshare_proto::frame::{self, DeliveryId, FileKey, Frame, FrameError};

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 64 * 1024;
/// Most spare data buffers kept for reuse.
const MAX_SPARE: usize = 32;

/// The socket beneath a TLS stream that carries file data, read up to 64 KiB (`READ_CHUNK`) per
/// system call. rustls asks its transport for at most 4 KiB per read
/// (`DeframerVecBuffer::prepare_read`), so straight over a socket every 4 KiB received cost a
/// read system call, a readiness wake-up and often a resize of rustls's buffer; the buffer
/// here takes whatever the socket holds at once and serves rustls from memory (writes pass
/// straight through). Members' CPU on the CPU-bound benchmark fell by a tenth with it.
pub fn read_ahead<S: AsyncRead>(socket: S) -> BufReader<S> {
    BufReader::with_capacity(READ_CHUNK, socket)
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("cannot encode frame: {0}")]
    Encode(#[from] gshare_proto::EncodeError),
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("peer took no data for {} seconds", .0.as_secs())]
    WriteTimeout(Duration),
}

/// A byte stream with a read buffer, read and written in whole frames.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    buffer: Vec<u8>,
    /// Bytes of free space asked for before each read.
    read_size: usize,
    /// Buffers handed back by [`Connection::recycle`], for the next data frames.
    spare: Vec<Vec<u8>>,
    /// Largest frame accepted, prefix included.
    max_frame_len: usize,
    /// Longest time one write or flush may take.
    write_timeout: Option<Duration>,
}

impl<S> Connection<S> {
    /// A connection that reads up to 64 KiB at a time: for the side that receives file data.
    pub fn new(stream: S) -> Self {
        Self::with_read_size(stream, READ_CHUNK)
    }

    /// A connection that reads up to `read_size` bytes at a time. A side that only receives
    /// small frames (the server's end of a member session) keeps less memory per connection.
    pub fn with_read_size(stream: S, read_size: usize) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            read_size: read_size.max(1),
            spare: Vec::new(),
            max_frame_len: frame::MAX_FRAME_LEN + frame::LENGTH_PREFIX,
            write_timeout: None,
        }
    }

    /// Refuses frames longer than `max_body` bytes (after the length prefix) as soon as their
    /// prefix arrives, before any memory is set aside for them.
    pub fn limit_frames(&mut self, max_body: usize) {
        self.max_frame_len = max_body.min(frame::MAX_FRAME_LEN) + frame::LENGTH_PREFIX;
    }

    /// Bounds every write and flush by `limit`; one that takes longer fails with
    /// [`ConnectionError::WriteTimeout`] (the peer is not reading).
    pub fn set_write_timeout(&mut self, limit: Duration) {
        self.write_timeout = Some(limit);
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Runs one write step under the write timeout, if one is set.
    async fn bounded<T>(
        limit: Option<Duration>,
        step: impl Future<Output = std::io::Result<T>>,
    ) -> Result<T, ConnectionError> {
        match limit {
            Some(limit) => Ok(timeout(limit, step).await.map_err(|_| ConnectionError::WriteTimeout(limit))??),
            None => Ok(step.await?),
        }
    }
}

/// Reading needs only the read side: a connection split in two (a reader task and a writer
/// task, so that neither end ever waits on the other) reads with one half.
impl<S: AsyncRead + Unpin> Connection<S> {
    /// The next frame; `None` when the peer closed the stream cleanly between frames.
    ///
    /// Cancel-safe: `read_buf` appends bytes only when a read completes, so this can sit in a
    /// `select!` beside other work. Reads land directly in the frame buffer and stop at the end
    /// of the frame being read, so a whole frame leaves the buffer empty (nothing to move). The
    /// bytes of a data frame go into a recycled buffer when there is one.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            let spare = &mut self.spare;
            // Data and pieces land in a recycled buffer when there is one.
            let decoded = frame::decode_with(&self.buffer, |bytes| match spare.pop() {
                Some(mut reused) => {
                    reused.clear();
                    reused.extend_from_slice(bytes);
                    reused
                }
                None => bytes.to_vec(),
            })?;
            if let Some((frame, used)) = decoded {
                self.buffer.drain(..used);
                return Ok(Some(frame));
            }
            let wanted = match frame::declared_len(&self.buffer) {
                Some(frame_len) if frame_len > self.max_frame_len => {
                    return Err(FrameError::BadLength(frame_len - frame::LENGTH_PREFIX).into());
                }
                Some(frame_len) => frame_len - self.buffer.len(),
                None => self.read_size,
            };
            self.buffer.reserve(wanted);
            let read = match (&mut self.stream).take(wanted as u64).read_buf(&mut self.buffer).await {
                Ok(read) => read,
                // A TLS peer that vanishes without close_notify looks like this.
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && self.buffer.is_empty() => {
                    return Ok(None);
                }
                Err(error) => return Err(error.into()),
            };
            if read == 0 {
                return if self.buffer.is_empty() { Ok(None) } else { Err(ConnectionError::Truncated) };
            }
        }
    }

    /// Hands back the buffer of a data frame that is done with, for the next one to reuse.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < MAX_SPARE {
            self.spare.push(buffer);
        }
    }
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Writes one frame and flushes it.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        let bytes = frame.encode()?;
        Self::bounded(self.write_timeout, self.stream.write_all(&bytes)).await?;
        Self::bounded(self.write_timeout, self.stream.flush()).await
    }

    /// Writes one frame without flushing it: for a writer that sends many small frames in a
    /// row (over a buffered stream) and flushes when it has nothing more to send.
    pub async fn write_frame_unflushed(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        let bytes = frame.encode()?;
        Self::bounded(self.write_timeout, self.stream.write_all(&bytes)).await
    }

    /// Writes a data frame straight from `bytes`, without building it in memory first.
    /// Not flushed: the next write or [`Connection::flush`] sends it.
    pub async fn write_data(&mut self, delivery: DeliveryId, bytes: &[u8]) -> Result<(), ConnectionError> {
        let header = frame::data_header(delivery, bytes.len())?;
        Self::bounded(self.write_timeout, self.stream.write_all(&header)).await?;
        Self::bounded(self.write_timeout, self.stream.write_all(bytes)).await
    }

    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        Self::bounded(self.write_timeout, self.stream.flush()).await
    }

    /// Writes a piece frame straight from `bytes`, and flushes it.
    pub async fn write_piece(&mut self, file: &FileKey, piece: u32, bytes: &[u8]) -> Result<(), ConnectionError> {
        let header = frame::piece_header(file, piece, bytes.len())?;
        Self::bounded(self.write_timeout, self.stream.write_all(&header)).await?;
        Self::bounded(self.write_timeout, self.stream.write_all(bytes)).await?;
        Self::bounded(self.write_timeout, self.stream.flush()).await
    }

    /// Ends the stream cleanly (for TLS, sends close_notify).
    pub async fn shutdown(&mut self) -> Result<(), ConnectionError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gshare_proto::frame::Text;

    #[tokio::test]
    async fn frames_cross_a_stream_and_a_clean_end_is_none() {
        let (a, b) = tokio::io::duplex(64);
        let mut writer = Connection::new(a);
        let mut reader = Connection::new(b);
        let frames: Vec<Frame> = (0..3).map(|i| Frame::Refused { reason: Text::new(&format!("no {i}")) }).collect();
        let sent = frames.clone();
        let task = tokio::spawn(async move {
            for frame in &sent {
                writer.write_frame(frame).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        });
        for frame in frames {
            assert_eq!(reader.read_frame().await.unwrap(), Some(frame));
        }
        assert_eq!(reader.read_frame().await.unwrap(), None);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn data_frames_reuse_recycled_buffers() {
        let (a, b) = tokio::io::duplex(1024);
        let mut writer = Connection::new(a);
        let mut reader = Connection::new(b);
        // Shrinking, as a file's chunks do (full chunks, then the tail): each fits the buffer
        // recycled before it without growing it.
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 5000 - usize::from(i)]).collect();
        let sent = chunks.clone();
        let task = tokio::spawn(async move {
            for chunk in &sent {
                writer.write_data(DeliveryId(4), chunk).await.unwrap();
            }
            writer.write_frame(&Frame::Ping).await.unwrap();
        });
        let mut recycled_at = None;
        for chunk in &chunks {
            let Some(Frame::Data { delivery, bytes }) = reader.read_frame().await.unwrap() else { panic!("not data") };
            assert_eq!((delivery, &bytes), (DeliveryId(4), chunk));
            if let Some(pointer) = recycled_at {
                assert_eq!(bytes.as_ptr(), pointer, "the recycled buffer was reused");
            }
            recycled_at = Some(bytes.as_ptr());
            reader.recycle(bytes);
        }
        assert_eq!(reader.read_frame().await.unwrap(), Some(Frame::Ping));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_an_error_and_an_oversized_length_is_refused_at_once() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut reader = Connection::new(b);
        a.write_all(&[0, 0, 0, 10, 3, 0]).await.unwrap();
        drop(a);
        assert!(matches!(reader.read_frame().await, Err(ConnectionError::Truncated)));

        let (mut a, b) = tokio::io::duplex(64);
        let mut reader = Connection::new(b);
        a.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
        // Refused without waiting for the two gigabytes it announced.
        assert!(matches!(reader.read_frame().await, Err(ConnectionError::Frame(FrameError::BadLength(_)))));
    }

    #[tokio::test]
    async fn memory_per_stranger_is_what_a_request_needs() {
        // Regression: a stranger's first frame could declare 1 MiB, and the buffer reserved it.
        let (mut a, b) = tokio::io::duplex(64);
        let mut reader = Connection::with_read_size(b, 4096);
        reader.limit_frames(16 * 1024);
        a.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        assert!(matches!(reader.read_frame().await, Err(ConnectionError::Frame(FrameError::BadLength(_)))));
        assert!(reader.buffer.capacity() < 64 * 1024, "nothing reserved for the declared megabyte");
        // A frame within the limit still passes.
        let (a, b) = tokio::io::duplex(64);
        let (mut writer, mut reader) = (Connection::new(a), Connection::new(b));
        reader.limit_frames(16 * 1024);
        writer.write_frame(&Frame::Ping).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap(), Some(Frame::Ping));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_ends_a_write_in_time() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut writer = Connection::new(a);
        writer.set_write_timeout(Duration::from_secs(30));
        // The peer never reads: the duplex fills and the write waits until the limit.
        let error = writer.write_data(DeliveryId(1), &[0; 64 * 1024]).await.unwrap_err();
        assert!(matches!(error, ConnectionError::WriteTimeout(limit) if limit == Duration::from_secs(30)), "{error}");
    }
}
