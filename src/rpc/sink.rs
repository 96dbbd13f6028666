//! The server side of one call: grpcio's sinks and request stream, each
//! carrying the call's [`CallRecord`], so that every call is measured in one
//! place (see [`super::metrics`]).
//!
//! The call runtime ([`super`]) wraps what grpcio hands the generated
//! registration and passes these types to the handlers, which use them as
//! grpcio's own: `sink.send((msg, flags)).await?`, `requests.try_next().await?`.
//! Ending the call (the reply, `close`, or the status) is the runtime's job.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::prelude::*;
use grpcio::{
    ClientStreamingSinkResult, DuplexSinkFailure, Metadata, RpcStatus, RpcStatusCode, ServerStreamingSinkFailure,
    UnarySinkResult, WriteFlags,
};

use super::metrics::{CallRecord, MethodMetrics};
use crate::telemetry::Span;

/// The messages of a client-streaming or bidirectional call; counts each one.
pub struct RequestStream<T> {
    inner: grpcio::RequestStream<T>,
    call: Arc<CallRecord>,
}

impl<T> Stream for RequestStream<T> {
    type Item = grpcio::Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(_))) = &next {
            self.call.received();
        }
        next
    }
}

/// Generates the wrapper of a grpcio sink: the sink and its call's record,
/// with `fail` (which counts the status) and `set_headers`.
macro_rules! measured_sink {
    ($(#[$doc:meta])* $name:ident, $failed:ty) => {
        $(#[$doc])*
        pub struct $name<T> {
            inner: grpcio::$name<T>,
            call: Arc<CallRecord>,
        }

        impl<T> $name<T> {
            /// Ends the call with `status`.
            pub(super) fn fail(self, status: RpcStatus) -> $failed {
                self.call.finish(status.code());
                self.inner.fail(status)
            }

            /// Initial metadata to send before the first message.
            pub fn set_headers(&mut self, headers: Metadata) {
                self.inner.set_headers(headers);
            }
        }
    };
}

measured_sink!(
    /// Ends a unary call.
    UnarySink,
    UnarySinkResult
);
measured_sink!(
    /// Ends a client-streaming call.
    ClientStreamingSink,
    ClientStreamingSinkResult
);
measured_sink!(
    /// Streams the responses of a server-streaming call.
    ServerStreamingSink,
    ServerStreamingSinkFailure
);
measured_sink!(
    /// Streams the responses of a bidirectional call.
    DuplexSink,
    DuplexSinkFailure
);

/// The sinks that end their call with one message: `success` counts it.
macro_rules! reply_sink {
    ($name:ident, $sent:ty) => {
        impl<T> $name<T> {
            /// Sends the response and the OK status.
            pub(super) fn success(self, message: T) -> $sent {
                self.call.sent();
                self.call.finish(RpcStatusCode::OK);
                self.inner.success(message)
            }
        }
    };
}

reply_sink!(UnarySink, UnarySinkResult);
reply_sink!(ClientStreamingSink, ClientStreamingSinkResult);

/// The sinks that stream responses: each message sent counts, and the call
/// counts as OK when `close` is called.
macro_rules! streaming_sink {
    ($name:ident) => {
        impl<T> Sink<(T, WriteFlags)> for $name<T> {
            type Error = grpcio::Error;

            fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<grpcio::Result<()>> {
                Pin::new(&mut self.inner).poll_ready(cx)
            }

            fn start_send(mut self: Pin<&mut Self>, item: (T, WriteFlags)) -> grpcio::Result<()> {
                Pin::new(&mut self.inner).start_send(item)?;
                self.call.sent();
                Ok(())
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<grpcio::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }

            /// The handler ends the call OK: counted as it asks to close, before
            /// the status goes out (go-grpc-prometheus counts as the handler
            /// returns), so a client that has the status sees it counted.
            fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<grpcio::Result<()>> {
                self.call.finish(RpcStatusCode::OK);
                Pin::new(&mut self.inner).poll_close(cx)
            }
        }
    };
}

streaming_sink!(ServerStreamingSink);
streaming_sink!(DuplexSink);

/// Measures a unary call; its request is its one message received.
pub(super) fn unary<T>(sink: grpcio::UnarySink<T>, method: &MethodMetrics, span: Option<Span>) -> UnarySink<T> {
    let call = method.start(span);
    call.received();
    UnarySink { inner: sink, call }
}

/// Measures a server-streaming call; its request is its one message received.
pub(super) fn server_streaming<T>(
    sink: grpcio::ServerStreamingSink<T>,
    method: &MethodMetrics,
    span: Option<Span>,
) -> ServerStreamingSink<T> {
    let call = method.start(span);
    call.received();
    ServerStreamingSink { inner: sink, call }
}

/// Measures a client-streaming call.
pub(super) fn client_streaming<Req, Resp>(
    stream: grpcio::RequestStream<Req>,
    sink: grpcio::ClientStreamingSink<Resp>,
    method: &MethodMetrics,
    span: Option<Span>,
) -> (RequestStream<Req>, ClientStreamingSink<Resp>) {
    let call = method.start(span);
    (RequestStream { inner: stream, call: call.clone() }, ClientStreamingSink { inner: sink, call })
}

/// Measures a bidirectional call.
pub(super) fn duplex<Req, Resp>(
    stream: grpcio::RequestStream<Req>,
    sink: grpcio::DuplexSink<Resp>,
    method: &MethodMetrics,
    span: Option<Span>,
) -> (RequestStream<Req>, DuplexSink<Resp>) {
    let call = method.start(span);
    (RequestStream { inner: stream, call: call.clone() }, DuplexSink { inner: sink, call })
}
