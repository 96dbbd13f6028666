//! `helloworld.Greeter`: the contract of grpc-go's `examples/helloworld`, so
//! that the official greeter client and server work with ours.

use log::debug;

use crate::limits;
use crate::proto::helloworld::{HelloReply, HelloRequest};
use crate::rpc::api::helloworld::Greeter;
use crate::rpc::{Call, CallError};

/// Serves `helloworld.Greeter`.
#[derive(Clone)]
pub struct HelloWorld {
    /// Longest name accepted, in bytes.
    max_name_bytes: usize,
}

impl HelloWorld {
    pub fn new(max_name_bytes: usize) -> Self {
        HelloWorld { max_name_bytes }
    }
}

impl Greeter for HelloWorld {
    /// Answers `"Hello <name>"`.
    async fn say_hello(&self, _call: &mut Call, request: HelloRequest) -> Result<HelloReply, CallError> {
        limits::check_name(&request.name, 0, self.max_name_bytes)?;
        debug!("Received: {}", request.name);
        Ok(HelloReply { message: format!("Hello {}", request.name), ..Default::default() })
    }
}
