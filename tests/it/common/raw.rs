//! grpcio's raw call path with bytes in and bytes out: a test sends any bytes
//! at all as a request message, to any method, in any call pattern.

use std::time::Duration;

use futures::executor::block_on;
use futures::prelude::*;
use grpcio::{CallOption, Marshaller, Method, MethodType, RpcStatusCode, WriteFlags};

fn raw_ser(msg: &Vec<u8>, buf: &mut grpcio::GrpcSlice) -> grpcio::Result<()> {
    *buf = grpcio::GrpcSlice::from(msg.as_slice());
    Ok(())
}

fn raw_de(mut reader: grpcio::MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(out)
}

/// A method whose requests and responses are raw bytes.
pub fn method(ty: MethodType, name: &'static str) -> Method<Vec<u8>, Vec<u8>> {
    Method {
        ty,
        name,
        req_mar: Marshaller { ser: raw_ser, de: raw_de },
        resp_mar: Marshaller { ser: raw_ser, de: raw_de },
    }
}

/// Every method the server hosts that takes a request message, by pattern
/// (health Watch last: a valid request holds it open until the deadline).
pub const METHODS: &[(&str, MethodType)] = &[
    ("/greet_service.GreetService/SayHello", MethodType::Unary),
    ("/greet_service.GreetService/SayHelloServerStreaming", MethodType::ServerStreaming),
    ("/greet_service.GreetService/SayHelloClientStreaming", MethodType::ClientStreaming),
    ("/greet_service.GreetService/SayHelloBidirectionalStreaming", MethodType::Duplex),
    ("/helloworld.Greeter/SayHello", MethodType::Unary),
    ("/routeguide.RouteGuide/GetFeature", MethodType::Unary),
    ("/routeguide.RouteGuide/ListFeatures", MethodType::ServerStreaming),
    ("/routeguide.RouteGuide/RecordRoute", MethodType::ClientStreaming),
    ("/routeguide.RouteGuide/RouteChat", MethodType::Duplex),
    ("/grpc.health.v1.Health/Check", MethodType::Unary),
    ("/grpc.health.v1.Health/Watch", MethodType::ServerStreaming),
];

/// Calls `name` with `messages` as its requests (unary and server-streaming
/// calls send the first, or an empty one; a client's stream is closed after
/// the last), with a 10 s deadline; Ok with the replies, or the status.
pub fn call(
    client: &grpcio::Client,
    name: &'static str,
    ty: MethodType,
    messages: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, (RpcStatusCode, String)> {
    let method = method(ty, name);
    let opt = CallOption::default().timeout(Duration::from_secs(10));
    let first = messages.first().cloned().unwrap_or_default();
    let result: grpcio::Result<Vec<Vec<u8>>> = block_on(async {
        match ty {
            MethodType::Unary => Ok(vec![client.unary_call_async(&method, &first, opt)?.await?]),
            MethodType::ServerStreaming => client.server_streaming(&method, &first, opt)?.try_collect().await,
            MethodType::ClientStreaming => {
                let (mut sink, receiver) = client.client_streaming(&method, opt)?;
                let sent = send_all(&mut sink, messages).await;
                greet::client::settle(sent, receiver.await.map(|reply| vec![reply]))
            }
            MethodType::Duplex => {
                let (mut sink, receiver) = client.duplex_streaming(&method, opt)?;
                let sent = send_all(&mut sink, messages).await;
                greet::client::settle(sent, receiver.try_collect().await)
            }
        }
    });
    result.map_err(super::code_of)
}

/// Sends every message, then closes the sending side. The sink is borrowed:
/// dropping it early would cancel the call, hiding the server's status.
async fn send_all<S>(sink: &mut S, messages: Vec<Vec<u8>>) -> grpcio::Result<()>
where
    S: Sink<(Vec<u8>, WriteFlags), Error = grpcio::Error> + Unpin,
{
    for message in messages {
        sink.send((message, WriteFlags::default())).await?;
    }
    sink.close().await
}
