//! `tonic-peer --addr HOST:PORT`: `greet_service.GreetService` and
//! `helloworld.Greeter` on tonic, with the Go demo's answers
//! (../../../shared/CONTRACT.md) and no wait between server-stream messages,
//! like our `server --stream-interval 0`. Only bench/run.py runs it: it is the
//! benchmark's tonic column, pinned to one core like the other servers (the
//! multi-threaded runtime then has one worker, as `available_parallelism`
//! follows the CPU affinity).

use std::net::SocketAddr;
use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

mod greet {
    tonic::include_proto!("greet_service");
}
mod helloworld {
    tonic::include_proto!("helloworld");
}

use greet::greet_service_server::{GreetService, GreetServiceServer};
use greet::{HelloRequest, HelloResponse, MessagesList, NamesList, NoParam};
use helloworld::greeter_server::{Greeter, GreeterServer};

type ResponseStream = Pin<Box<dyn Stream<Item = Result<HelloResponse, Status>> + Send>>;

fn greeting(name: &str) -> HelloResponse {
    HelloResponse { message: format!("Hello {name}") }
}

#[derive(Default)]
struct Greet;

#[tonic::async_trait]
impl GreetService for Greet {
    async fn say_hello(&self, _req: Request<NoParam>) -> Result<Response<HelloResponse>, Status> {
        Ok(Response::new(HelloResponse { message: "Hello".to_string() }))
    }

    type SayHelloServerStreamingStream = ResponseStream;

    async fn say_hello_server_streaming(
        &self,
        req: Request<NamesList>,
    ) -> Result<Response<Self::SayHelloServerStreamingStream>, Status> {
        let names = req.into_inner().names;
        let answers = tokio_stream::iter(names).map(|name| Ok(greeting(&name)));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn say_hello_client_streaming(
        &self,
        req: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<MessagesList>, Status> {
        let mut stream = req.into_inner();
        let mut messages = Vec::new();
        while let Some(req) = stream.message().await? {
            messages.push(greeting(&req.name).message);
        }
        Ok(Response::new(MessagesList { messages }))
    }

    type SayHelloBidirectionalStreamingStream = ResponseStream;

    async fn say_hello_bidirectional_streaming(
        &self,
        req: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::SayHelloBidirectionalStreamingStream>, Status> {
        let answers = req.into_inner().map(|req| req.map(|req| greeting(&req.name)));
        Ok(Response::new(Box::pin(answers)))
    }
}

#[derive(Default)]
struct HelloWorld;

#[tonic::async_trait]
impl Greeter for HelloWorld {
    async fn say_hello(
        &self,
        req: Request<helloworld::HelloRequest>,
    ) -> Result<Response<helloworld::HelloReply>, Status> {
        let message = format!("Hello {}", req.into_inner().name);
        Ok(Response::new(helloworld::HelloReply { message }))
    }
}

fn parse_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--addr"), Some(addr), None) => addr.parse().map_err(|e| format!("--addr {addr:?}: {e}")),
        _ => Err("usage: tonic-peer --addr HOST:PORT".to_string()),
    }
}

#[tokio::main]
async fn main() {
    let addr = match parse_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(GreetServiceServer::new(Greet))
        .add_service(GreeterServer::new(HelloWorld))
        .serve_with_shutdown(addr, async {
            // SIGTERM (run.py's stop) or Ctrl-C ends it cleanly.
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler can be installed at start-up");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
    if let Err(e) = served.await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
