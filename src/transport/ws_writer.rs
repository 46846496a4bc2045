//! Outgoing WebSocket frames: a socket's queued frames, encoded and written straight to its
//! TCP connection.
//!
//! A broadcast wakes only the connection's task, and a socket with a backlog has all its
//! queued frames (up to [`MAX_CHUNK`]) encoded into one write. The encoded bytes live only
//! until the kernel took them: an idle socket holds no write buffer. While a write is
//! unfinished nothing more is taken from the queue, so a client that does not read fills its
//! queue and is closed as a slow consumer (see [`crate::outbox`]).

use std::io;
use std::task::{ready, Context, Poll, Waker};

use actix_http::ws::{CloseReason as WsClose, OpCode, Parser};
use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

use crate::outbox::Frames;
use crate::protocol::Frame;

/// Stop adding frames to one write past this size, so a long backlog is written in steps.
pub(crate) const MAX_CHUNK: usize = 64 * 1024;

/// Bytes written in one poll before the task lets others run.
const WRITE_BUDGET: usize = 4 * MAX_CHUNK;

/// The write side of one connection.
#[derive(Default)]
pub(crate) struct Writer {
    /// Encoded bytes the kernel has not taken yet; empty (no allocation) when idle.
    pending: BytesMut,
}

fn encode(buf: &mut BytesMut, frame: &Frame) {
    // Room for the header too: one allocation for a lone frame, not an allocation and a grow.
    buf.reserve(frame.len() + 10);
    match frame {
        Frame::Text(text) => Parser::write_message(buf, text.as_bytes(), OpCode::Text, true, false),
        Frame::Binary(bin) => Parser::write_message(buf, bin, OpCode::Binary, true, false),
    }
}

impl Writer {
    /// Queues a pong answering a ping, after what is already pending.
    pub(crate) fn pong(&mut self, payload: &[u8]) {
        Parser::write_message(&mut self.pending, payload, OpCode::Pong, true, false);
    }

    /// Takes what is queued (up to [`MAX_CHUNK`]) and then the close frame: the last bytes
    /// the connection writes. Frames queued behind are dropped, so a slow consumer's backlog
    /// is not written before it is told to go (delivery is at-most-once, as in Phoenix).
    pub(crate) fn close(&mut self, frames: &mut Frames, reason: Option<WsClose>) {
        let pending = &mut self.pending;
        let _ = frames.poll_drain(&mut Context::from_waker(Waker::noop()), MAX_CHUNK, |f| {
            encode(pending, &f)
        });
        Parser::write_close(&mut self.pending, reason, false);
    }

    /// Writes queued frames as they come. Pending while there is nothing to write or the
    /// connection cannot take more; ready only when the connection failed.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        stream: &TcpStream,
        frames: &mut Frames,
    ) -> Poll<io::Error> {
        let mut written = 0;
        loop {
            if self.pending.is_empty() {
                let pending = &mut self.pending;
                ready!(frames.poll_drain(cx, MAX_CHUNK, |f| encode(pending, &f)));
            }
            match self.poll_flush(cx, stream) {
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(e),
                Poll::Pending => return Poll::Pending,
            }
            if written >= WRITE_BUDGET {
                // A socket with an endless backlog must not keep its worker thread.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Writes everything pending; ready with the bytes written once all are.
    pub(crate) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        stream: &TcpStream,
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        while !self.pending.is_empty() {
            match stream.try_write(&self.pending) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    written += n;
                    self.pending.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if written > 0 {
            ::metrics::counter!(crate::metrics::BYTES_OUT).increment(written as u64);
        }
        // Dropped, not kept: an idle socket holds no buffer.
        self.pending = BytesMut::new();
        Poll::Ready(Ok(written))
    }

    /// Writes everything pending.
    pub(crate) async fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx, stream))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    #[tokio::test]
    async fn queued_frames_are_written_together_then_the_close_frame() {
        let (mut client, server) = pair().await;
        let (tx, rx) = crate::outbox::outbox(crate::protocol::Serializer::V2, 8);
        let mut frames = rx.rx;
        let mut writer = Writer::default();
        assert!(tx.push(Frame::Text("ab".into())));
        assert!(tx.push(Frame::Binary(Bytes::from_static(&[1, 2, 3]))));
        let polled = writer.poll_write(
            &mut Context::from_waker(Waker::noop()),
            &server,
            &mut frames,
        );
        assert!(polled.is_pending(), "no error, nothing more queued");
        assert_eq!(writer.pending.capacity(), 0, "no buffer kept once written");
        assert!(tx.push(Frame::Text("c".into())));
        writer.close(&mut frames, Some(actix_http::ws::CloseCode::Normal.into()));
        writer.flush(&server).await.expect("flush");
        drop(server);
        let mut got = vec![];
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(
            &got[..],
            b"\x81\x02ab\x82\x03\x01\x02\x03\x81\x01c\x88\x02\x03\xe8",
            "text, binary, the frame queued before the close, then the close frame"
        );
    }
}
