//! `helloworld.Greeter`: the contract of grpc-go's `examples/helloworld`, so
//! that the official greeter client and server work with ours.

use grpcio::RpcContext;
use log::debug;

use crate::call::UnarySink;
use crate::limits;
use crate::proto::helloworld::{HelloReply, HelloRequest};
use crate::proto::helloworld_grpc::Greeter;
use crate::status::{reply, CallError};

/// Serves `helloworld.Greeter`.
#[derive(Clone, Default)]
pub struct HelloWorld;

impl Greeter for HelloWorld {
    /// Answers "Hello " + name, like grpc-go's greeter_server.
    fn say_hello(&mut self, ctx: RpcContext, req: HelloRequest, sink: UnarySink<HelloReply>) {
        let answer = limits::check_name(&req.name, 0).map_err(CallError::from).map(|()| {
            debug!("Received: {}", req.name);
            HelloReply { message: format!("Hello {}", req.name), ..Default::default() }
        });
        ctx.spawn(reply("helloworld.Greeter/SayHello", sink, answer));
    }
}
