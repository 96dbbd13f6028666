//! The GreetService client: one `async fn` per call pattern, each call with
//! a deadline. Results come back as they arrive through `on_message`, so a
//! caller can print streamed answers at once. Callers block once, at the top
//! (the CLI's `main`, a test), never inside these functions.

use std::time::Duration;

use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{CallOption, Channel, Metadata, StreamingCallSink, WriteFlags};

use crate::proto::greet::{HelloRequest, NamesList, NoParam};
use crate::proto::greet_grpc::{self as api, GreetServiceClient};
use crate::proto::helloworld;
use crate::proto::helloworld_grpc::{self as hello_api, GreeterClient};
use crate::telemetry::{Span, Tracing};

/// The demo client's names.
pub const DEMO_NAMES: &[&str] = &["Akhil", "Alice", "Bob"];

/// Calls `greet_service.GreetService` and `helloworld.Greeter`.
#[derive(Clone)]
pub struct Client {
    greet: GreetServiceClient,
    hello: GreeterClient,
    /// Deadline of each call, from its start.
    timeout: Duration,
    /// Metadata sent with every call (e.g. `authorization`).
    headers: Option<Metadata>,
    /// A client span per call, children of the context given (a new trace
    /// when it has no span), sent along as `traceparent`.
    tracing: Option<(Tracing, opentelemetry::Context)>,
}

/// The options of one call: its deadline, and `headers` if any.
pub fn call_option(timeout: Duration, headers: Option<&Metadata>) -> CallOption {
    let option = CallOption::default().timeout(timeout);
    match headers {
        Some(headers) => option.headers(headers.clone()),
        None => option,
    }
}

fn request(name: &str) -> HelloRequest {
    HelloRequest { name: name.to_string(), ..Default::default() }
}

impl Client {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Client {
            greet: GreetServiceClient::new(channel.clone()),
            hello: GreeterClient::new(channel),
            timeout,
            headers: None,
            tracing: None,
        }
    }

    /// Traces every call: a client span, a child of `parent`, whose
    /// `traceparent` the call carries.
    pub fn with_tracing(mut self, tracing: Tracing, parent: opentelemetry::Context) -> Self {
        self.tracing = Some((tracing, parent));
        self
    }

    /// Sends `headers` with every call, e.g. a bearer token's (`client::bearer_metadata`).
    pub fn with_headers(mut self, headers: Metadata) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Runs one call to `path` with its options: when tracing, inside a
    /// client span whose `traceparent` the call carries, ended with the
    /// call's status.
    async fn traced<T, F: Future<Output = grpcio::Result<T>>>(
        &self,
        path: &'static str,
        call: impl FnOnce(CallOption) -> F,
    ) -> grpcio::Result<T> {
        let Some((tracing, parent)) = &self.tracing else {
            return call(call_option(self.timeout, self.headers.as_ref())).await;
        };
        let span = tracing.client_span(path, parent);
        let headers = span.inject(self.headers.as_ref());
        let result = call(call_option(self.timeout, Some(&headers))).await;
        end_call(&span, &result);
        result
    }

    /// Unary `SayHello`: the server's greeting ("Hello").
    pub async fn say_hello(&self) -> grpcio::Result<String> {
        self.traced(api::METHOD_GREET_SERVICE_SAY_HELLO.name, |option| async move {
            Ok(self.greet.say_hello_async_opt(&NoParam::default(), option)?.await?.message)
        })
        .await
    }

    /// Server streaming: one greeting per name, passed to `on_message` as it arrives.
    pub async fn server_stream(&self, names: &[String], mut on_message: impl FnMut(String)) -> grpcio::Result<()> {
        let req = NamesList { names: names.to_vec(), ..Default::default() };
        self.traced(api::METHOD_GREET_SERVICE_SAY_HELLO_SERVER_STREAMING.name, |option| async move {
            let mut stream = self.greet.say_hello_server_streaming_opt(&req, option)?;
            while let Some(resp) = stream.try_next().await? {
                on_message(resp.message);
            }
            Ok(())
        })
        .await
    }

    /// Client streaming: sends the names `interval` apart, then closes its
    /// side and returns the server's list of greetings.
    pub async fn client_stream(&self, names: &[String], interval: Duration) -> grpcio::Result<Vec<String>> {
        self.traced(api::METHOD_GREET_SERVICE_SAY_HELLO_CLIENT_STREAMING.name, |option| async move {
            let (mut sink, receiver) = self.greet.say_hello_client_streaming_opt(option)?;
            let sent = send_paced(&mut sink, names, interval).await;
            // When sending fails the server has ended the call; its status is
            // what the receiver reports, so prefer it over the send error.
            let received = receiver.await;
            settle(sent, received).map(|list| list.messages)
        })
        .await
    }

    /// Bidirectional streaming: sends the names `interval` apart while
    /// receiving, concurrently, each greeting as the server answers it.
    pub async fn bidi(
        &self,
        names: &[String],
        interval: Duration,
        mut on_message: impl FnMut(String),
    ) -> grpcio::Result<()> {
        self.traced(api::METHOD_GREET_SERVICE_SAY_HELLO_BIDIRECTIONAL_STREAMING.name, |option| async move {
            let (mut sink, mut receiver) = self.greet.say_hello_bidirectional_streaming_opt(option)?;
            let send = send_paced(&mut sink, names, interval);
            let receive = async {
                while let Some(resp) = receiver.try_next().await? {
                    on_message(resp.message);
                }
                Ok::<(), grpcio::Error>(())
            };
            let (sent, received) = future::join(send, receive).await;
            settle(sent, received)
        })
        .await
    }

    /// Unary `helloworld.Greeter/SayHello` for `name`.
    pub async fn greet(&self, name: &str) -> grpcio::Result<String> {
        let req = helloworld::HelloRequest { name: name.to_string(), ..Default::default() };
        self.traced(hello_api::METHOD_GREETER_SAY_HELLO.name, |option| async move {
            Ok(self.hello.say_hello_async_opt(&req, option)?.await?.message)
        })
        .await
    }
}

/// Ends a call's client span with the status the call ended with (a
/// transport failure that carries none is UNAVAILABLE, as grpc-go reports it).
fn end_call<T>(span: &Span, result: &grpcio::Result<T>) {
    let code = match result {
        Ok(_) => grpcio::RpcStatusCode::OK,
        Err(grpcio::Error::RpcFailure(status)) => status.code(),
        Err(_) => grpcio::RpcStatusCode::UNAVAILABLE,
    };
    span.end_call(code);
}

/// The outcome of a call whose sending and receiving halves ended apart.
/// The receiving half carries the server's status, so it decides; a send
/// that failed because the server had already finished the call is no error
/// of its own (grpcio reports a close that raced the server's OK status as
/// `RpcFinished(None)`).
pub fn settle<T>(sent: grpcio::Result<()>, received: grpcio::Result<T>) -> grpcio::Result<T> {
    match (sent, received) {
        (_, Err(e)) => Err(e),
        (Ok(()), Ok(value)) | (Err(grpcio::Error::RpcFinished(_)), Ok(value)) => Ok(value),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// Closes the sending side of a client or bidi stream. The server may finish
/// the call with OK before the close itself completes; grpcio reports that race
/// as `RpcFinished(None)`, which is no error. The call's real outcome is what
/// its receiving half reports.
pub async fn half_close<T>(sink: &mut StreamingCallSink<T>) -> grpcio::Result<()> {
    match sink.close().await {
        Err(grpcio::Error::RpcFinished(None)) => Ok(()),
        other => other,
    }
}

/// Sends one request per name, waiting `interval` between sends, then
/// closes the sending side.
async fn send_paced<S>(sink: &mut S, names: &[String], interval: Duration) -> grpcio::Result<()>
where
    S: Sink<(HelloRequest, WriteFlags), Error = grpcio::Error> + Unpin,
{
    for (i, name) in names.iter().enumerate() {
        if i > 0 && !interval.is_zero() {
            Delay::new(interval).await;
        }
        // Unpaced sends may be coalesced; the close below flushes them.
        let flags = WriteFlags::default().buffer_hint(interval.is_zero() && i + 1 < names.len());
        sink.send((request(name), flags)).await?;
    }
    sink.close().await
}
