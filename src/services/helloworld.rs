//! `helloworld.Greeter`: the contract of grpc-go's `examples/helloworld`, so
//! that the official greeter client and server work with ours.

use grpcio::{RpcContext, UnarySink};
use log::debug;

use crate::limits;
use crate::proto::helloworld::{HelloReply, HelloRequest};
use crate::proto::helloworld_grpc::Greeter;
use crate::status::log_transport_error;

/// Serves `helloworld.Greeter`.
#[derive(Clone, Default)]
pub struct HelloWorld;

impl Greeter for HelloWorld {
    /// Answers "Hello " + name, like grpc-go's greeter_server.
    fn say_hello(&mut self, ctx: RpcContext, req: HelloRequest, sink: UnarySink<HelloReply>) {
        let reply = match limits::check_name(&req.name, 0) {
            Ok(()) => {
                debug!("Received: {}", req.name);
                Ok(HelloReply { message: format!("Hello {}", req.name), ..Default::default() })
            }
            Err(status) => Err(status),
        };
        ctx.spawn(async move {
            let sent = match reply {
                Ok(reply) => sink.success(reply).await,
                Err(status) => sink.fail(status).await,
            };
            if let Err(e) = sent {
                log_transport_error("helloworld.Greeter/SayHello", &e);
            }
        });
    }
}
