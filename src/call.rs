//! The server side of one call: grpcio's sinks and request stream, each
//! carrying the call's [`CallRecord`], so that every call is measured in one
//! place (see [`crate::metrics`]).
//!
//! The generated `create_<service>` functions (build.rs) wrap what grpcio
//! hands them and pass these types to the handlers, whose code is the same
//! as with grpcio's own: `sink.send((msg, flags)).await?`, `sink.close()`,
//! `sink.fail(status)`, `stream.try_next().await?`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::prelude::*;
use grpcio::{
    ClientStreamingSinkResult, DuplexSinkFailure, Metadata, RpcContext, RpcStatus, RpcStatusCode,
    ServerStreamingSinkFailure, UnarySinkResult, WriteFlags,
};

use crate::metrics::{CallRecord, MethodMetrics};
use crate::status::log_transport_error;

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
            pub fn fail(self, status: RpcStatus) -> $failed {
                self.call.finish(status.code());
                self.inner.fail(status)
            }

            /// Initial metadata to send before the first message.
            pub fn set_headers(&mut self, headers: Metadata) {
                self.inner.set_headers(headers);
            }
        }

        impl<T: Send + 'static> FailSink for $name<T> {
            fn fail_call(self, status: RpcStatus) -> impl Future<Output = grpcio::Result<()>> + Send + 'static {
                self.fail(status)
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
            pub fn success(self, message: T) -> $sent {
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
pub fn unary<T>(sink: grpcio::UnarySink<T>, method: &MethodMetrics) -> UnarySink<T> {
    let call = method.start();
    call.received();
    UnarySink { inner: sink, call }
}

/// Measures a server-streaming call; its request is its one message received.
pub fn server_streaming<T>(sink: grpcio::ServerStreamingSink<T>, method: &MethodMetrics) -> ServerStreamingSink<T> {
    let call = method.start();
    call.received();
    ServerStreamingSink { inner: sink, call }
}

/// Measures a client-streaming call.
pub fn client_streaming<Req, Resp>(
    stream: grpcio::RequestStream<Req>,
    sink: grpcio::ClientStreamingSink<Resp>,
    method: &MethodMetrics,
) -> (RequestStream<Req>, ClientStreamingSink<Resp>) {
    let call = method.start();
    (RequestStream { inner: stream, call: call.clone() }, ClientStreamingSink { inner: sink, call })
}

/// Measures a bidirectional call.
pub fn duplex<Req, Resp>(
    stream: grpcio::RequestStream<Req>,
    sink: grpcio::DuplexSink<Resp>,
    method: &MethodMetrics,
) -> (RequestStream<Req>, DuplexSink<Resp>) {
    let call = method.start();
    (RequestStream { inner: stream, call: call.clone() }, DuplexSink { inner: sink, call })
}

/// A sink that can end its call with a status: every sink above.
pub trait FailSink {
    fn fail_call(self, status: RpcStatus) -> impl Future<Output = grpcio::Result<()>> + Send + 'static;
}

/// What a method the service does not implement answers (the default of
/// every generated server trait method): UNIMPLEMENTED, naming the method.
pub fn unimplemented(ctx: RpcContext, sink: impl FailSink, method: &'static str) {
    let status =
        RpcStatus::with_message(RpcStatusCode::UNIMPLEMENTED, format!("{method} is not implemented by this server"));
    let failed = sink.fail_call(status);
    ctx.spawn(async move {
        if let Err(e) = failed.await {
            log_transport_error(method, &e);
        }
    });
}
