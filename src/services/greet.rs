//! `greet_service.GreetService`: the Go demo's four call patterns, with the
//! demo's exact responses and log lines (../shared/CONTRACT.md).

use std::time::Duration;

use futures::prelude::*;
use futures_timer::Delay;
use grpcio::WriteFlags;
use log::info;

use crate::limits;
use crate::proto::greet::{HelloRequest, HelloResponse, MessagesList, NamesList, NoParam};
use crate::rpc::api::greet::GreetService;
use crate::rpc::{Call, CallError, DuplexSink, RequestStream, ServerStreamingSink};

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
    /// Longest name accepted, in bytes ([`limits::MAX_NAME_BYTES`] by default).
    max_name_bytes: usize,
}

impl Greeter {
    pub fn new(stream_interval: Duration, max_name_bytes: usize) -> Self {
        Greeter { stream_interval, max_name_bytes }
    }
}

impl GreetService for Greeter {
    /// Answers "Hello": the request carries no name.
    async fn say_hello(&self, _call: &mut Call, _request: NoParam) -> Result<HelloResponse, CallError> {
        Ok(response("Hello".to_string()))
    }

    /// Sends `"Hello <name>"` for each name in order, waiting the stream
    /// interval after each send like the demo does (a timer future, so the
    /// completion-queue thread serves other calls meanwhile).
    async fn say_hello_server_streaming(
        &self,
        _call: &mut Call,
        request: NamesList,
        sink: &mut ServerStreamingSink<HelloResponse>,
    ) -> Result<(), CallError> {
        limits::check_names(&request.names, self.max_name_bytes)?;
        let interval = self.stream_interval;
        let last = request.names.len().saturating_sub(1);
        for (i, name) in request.names.into_iter().enumerate() {
            info!("Got request with name : {name}");
            let flags = WriteFlags::default().buffer_hint(interval.is_zero() && i < last);
            sink.send((response(greeting(&name)), flags)).await?;
            if !interval.is_zero() {
                Delay::new(interval).await;
            }
        }
        Ok(())
    }

    /// Collects `"Hello <name>"` for every request in arrival order and answers
    /// with the whole list once the client closes its side.
    async fn say_hello_client_streaming(
        &self,
        _call: &mut Call,
        requests: &mut RequestStream<HelloRequest>,
    ) -> Result<MessagesList, CallError> {
        let mut messages = Vec::new();
        while let Some(request) = requests.try_next().await? {
            limits::check_name(&request.name, messages.len(), self.max_name_bytes)?;
            limits::check_count(messages.len() + 1)?;
            info!("Got request with name : {}", request.name);
            messages.push(greeting(&request.name));
        }
        Ok(MessagesList { messages, ..Default::default() })
    }

    /// Answers each request with `"Hello <name>"` as soon as it arrives; ends
    /// when the client closes its side.
    async fn say_hello_bidirectional_streaming(
        &self,
        _call: &mut Call,
        requests: &mut RequestStream<HelloRequest>,
        sink: &mut DuplexSink<HelloResponse>,
    ) -> Result<(), CallError> {
        let mut index = 0;
        while let Some(request) = requests.try_next().await? {
            limits::check_name(&request.name, index, self.max_name_bytes)?;
            index += 1;
            info!("Got request with name : {}", request.name);
            sink.send((response(greeting(&request.name)), WriteFlags::default())).await?;
        }
        Ok(())
    }
}
