//! The WebSocket response body: writes a socket's queued frames straight to the connection.
//!
//! actix-ws hands a connection's outgoing messages through its `Session` channel to the
//! response body. Routing every frame through that channel would cost a second queue and a
//! second task wake-up per frame (outbox -> socket task -> session -> connection). Instead the
//! body reads the socket's outbox itself: a broadcast wakes only the connection, and a socket
//! with a backlog has all its queued frames encoded into one write. actix-ws's own body is
//! kept inside for the control frames the socket task sends through the `Session` (pongs and
//! the close frame). The close frame follows the queued frames taken in the same write and
//! ends the body: frames still queued behind it are dropped, so a slow consumer's backlog is
//! not written before it is told to go (delivery is at-most-once, as in Phoenix).

use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::outbox::Frames;
use crate::protocol::Frame;
use actix_http::ws::{OpCode, Parser};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::{Bytes, BytesMut};

/// Stop adding frames to one write past this size, so a long backlog is written in steps.
const MAX_CHUNK: usize = 64 * 1024;

/// The body of a WebSocket upgrade response: the socket's outbox, then actix-ws's control
/// frames.
pub(crate) struct OutboundBody {
    control: BoxBody,
    frames: Frames,
    buf: BytesMut,
    closing: bool,
}

impl OutboundBody {
    /// Wraps actix-ws's response body (`control`) and the socket's outbound queue.
    pub(crate) fn new(control: BoxBody, frames: Frames) -> Self {
        OutboundBody {
            control,
            frames,
            buf: BytesMut::new(),
            closing: false,
        }
    }
}

fn encode(buf: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::Text(text) => Parser::write_message(buf, text.as_bytes(), OpCode::Text, true, false),
        Frame::Binary(bin) => Parser::write_message(buf, bin, OpCode::Binary, true, false),
    }
}

impl MessageBody for OutboundBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if !this.closing {
            let buf = &mut this.buf;
            // Pending just means nothing is queued; the control body may still have frames.
            let _ = this
                .frames
                .poll_drain(cx, MAX_CHUNK, |frame| encode(buf, &frame));
        }
        // After the queued frames, so that a close frame follows everything queued before it.
        loop {
            match Pin::new(&mut this.control).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.buf.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.closing = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            ::metrics::counter!(crate::metrics::BYTES_OUT).increment(this.buf.len() as u64);
            // Taken, not split: an idle socket keeps no buffer.
            return Poll::Ready(Some(Ok(mem::take(&mut this.buf).freeze())));
        }
        if this.closing {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::poll_fn;

    async fn next(body: &mut OutboundBody) -> Option<Bytes> {
        poll_fn(|cx| Pin::new(&mut *body).poll_next(cx))
            .await
            .map(|r| r.expect("body error"))
    }

    #[tokio::test]
    async fn queued_frames_are_written_together_then_control_then_end() {
        let (tx, rx) = crate::outbox::outbox(crate::protocol::Serializer::V2, 8);
        let control = BoxBody::new(Bytes::from_static(b"\x88\x02\x03\xf3"));
        let mut body = OutboundBody::new(control, rx.rx);
        assert!(tx.push(Frame::Text("ab".into())));
        assert!(tx.push(Frame::Binary(Bytes::from_static(&[1, 2, 3]))));
        let chunk = next(&mut body).await.expect("one chunk");
        assert_eq!(
            &chunk[..],
            b"\x81\x02ab\x82\x03\x01\x02\x03\x88\x02\x03\xf3",
            "text frame, binary frame, then the control body's close frame"
        );
        assert!(next(&mut body).await.is_none(), "ends after the close");
        assert_eq!(body.buf.capacity(), 0, "no buffer kept");
    }
}
