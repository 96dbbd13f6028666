//! `greet_service.GreetService`: the Go demo's four call patterns, with the
//! demo's exact responses and log lines (../shared/CONTRACT.md).

use std::sync::Arc;
use std::time::Duration;

use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{RpcContext, WriteFlags};
use log::info;

use super::CallTracker;
use crate::call::{ClientStreamingSink, DuplexSink, RequestStream, ServerStreamingSink, UnarySink};
use crate::limits;
use crate::proto::greet::{HelloRequest, HelloResponse, MessagesList, NamesList, NoParam};
use crate::proto::greet_grpc::GreetService;
use crate::status::{finish_stream, reply, CallError};

/// The demo's greeting for a name.
pub fn greeting(name: &str) -> String {
    format!("Hello {name}")
}

fn response(message: String) -> HelloResponse {
    HelloResponse { message, ..Default::default() }
}

/// Serves `greet_service.GreetService`. Cheap to clone: grpcio clones the
/// service once per completion queue.
#[derive(Clone)]
pub struct Greeter {
    /// Wait after each server-stream send; the demo's is 2 s.
    stream_interval: Duration,
    tracker: Arc<CallTracker>,
}

impl Greeter {
    pub fn new(stream_interval: Duration, tracker: Arc<CallTracker>) -> Self {
        Greeter { stream_interval, tracker }
    }
}

impl GreetService for Greeter {
    /// Answers "Hello": the request carries no name.
    fn say_hello(&mut self, ctx: RpcContext, _req: NoParam, sink: UnarySink<HelloResponse>) {
        ctx.spawn(reply("SayHello", sink, Ok(response("Hello".to_string()))));
    }

    /// Sends `"Hello <name>"` for each name in order, waiting the stream
    /// interval after each send like the demo does. The wait is a timer
    /// future: the completion-queue thread serves other calls meanwhile.
    fn say_hello_server_streaming(
        &mut self,
        ctx: RpcContext,
        req: NamesList,
        mut sink: ServerStreamingSink<HelloResponse>,
    ) {
        const METHOD: &str = "SayHelloServerStreaming";
        let guard = self.tracker.enter();
        let interval = self.stream_interval;
        let checked = limits::check_names(&req.names);
        ctx.spawn(async move {
            let _guard = guard;
            let result = async {
                checked?;
                let last = req.names.len().saturating_sub(1);
                for (i, name) in req.names.into_iter().enumerate() {
                    info!("Got request with name : {name}");
                    // With no wait between messages, let the core coalesce
                    // writes; the last one (and every one when pacing) is flushed.
                    let flags = WriteFlags::default().buffer_hint(interval.is_zero() && i < last);
                    sink.send((response(greeting(&name)), flags)).await?;
                    if !interval.is_zero() {
                        Delay::new(interval).await;
                    }
                }
                sink.close().await?;
                Ok(())
            }
            .await;
            finish_stream(METHOD, result, |status| sink.fail(status)).await;
        });
    }

    /// Collects `"Hello <name>"` for every request in arrival order and answers
    /// with the whole list once the client closes its side.
    fn say_hello_client_streaming(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<HelloRequest>,
        sink: ClientStreamingSink<MessagesList>,
    ) {
        const METHOD: &str = "SayHelloClientStreaming";
        let guard = self.tracker.enter();
        ctx.spawn(async move {
            let _guard = guard;
            let collected: Result<Vec<String>, CallError> = async {
                let mut messages = Vec::new();
                while let Some(req) = stream.try_next().await? {
                    limits::check_name(&req.name, messages.len())?;
                    limits::check_count(messages.len() + 1)?;
                    info!("Got request with name : {}", req.name);
                    messages.push(greeting(&req.name));
                }
                Ok(messages)
            }
            .await;
            let list = collected.map(|messages| MessagesList { messages, ..Default::default() });
            reply(METHOD, sink, list).await;
        });
    }

    /// Answers each request with `"Hello <name>"` as soon as it arrives; ends
    /// when the client closes its side.
    fn say_hello_bidirectional_streaming(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<HelloRequest>,
        mut sink: DuplexSink<HelloResponse>,
    ) {
        const METHOD: &str = "SayHelloBidirectionalStreaming";
        let guard = self.tracker.enter();
        ctx.spawn(async move {
            let _guard = guard;
            // Each answer is written as its own batch as soon as its request
            // is in: the completion queue hands requests over one at a time,
            // so there is no later point at which several answers could be
            // flushed together without delaying the first (see bench/README.md).
            let result = async {
                let mut index = 0;
                while let Some(req) = stream.try_next().await? {
                    limits::check_name(&req.name, index)?;
                    index += 1;
                    info!("Got request with name : {}", req.name);
                    sink.send((response(greeting(&req.name)), WriteFlags::default())).await?;
                }
                sink.close().await?;
                Ok(())
            }
            .await;
            finish_stream(METHOD, result, |status| sink.fail(status)).await;
        });
    }
}
