//! gRPC server reflection: `grpc.reflection.v1.ServerReflection` and the
//! older `grpc.reflection.v1alpha.ServerReflection` (same messages, same
//! handler), so that grpcurl and other tools call our services with no
//! .proto file at hand.
//!
//! Everything it answers comes from the descriptors rust-protobuf 3 generates
//! for each `protos/*.proto` (`file_descriptor()`): the server hands it the
//! hosted services with the descriptor of the file that defines each one,
//! and it indexes those files and everything they import.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures::prelude::*;
use grpcio::{RpcStatusCode, WriteFlags};
use protobuf::descriptor::{DescriptorProto, FileDescriptorProto};
use protobuf::reflect::FileDescriptor;
use protobuf::Message;

use crate::proto::reflection_v1::server_reflection_request::Message_request as Request;
use crate::proto::reflection_v1::server_reflection_response::Message_response as Response;
use crate::proto::reflection_v1::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse,
};
use crate::proto::{reflection_v1, reflection_v1alpha};
use crate::rpc::api::{reflection_v1 as v1_api, reflection_v1alpha as v1alpha_api};
use crate::rpc::{Call, CallError, DuplexSink, RequestStream, Runtime};

/// The two reflection services, ready to host (full name, file, service),
/// answering for `others` (full name, file) and for themselves.
pub fn services(
    others: &[(&'static str, &'static FileDescriptor)],
    runtime: &Runtime,
) -> Result<[(&'static str, &'static FileDescriptor, grpcio::Service); 2], String> {
    let v1 = (v1_api::SERVER_REFLECTION_FULL_NAME, reflection_v1::file_descriptor());
    let v1alpha = (v1alpha_api::SERVER_REFLECTION_FULL_NAME, reflection_v1alpha::file_descriptor());
    let mut reflected: Vec<(&str, &FileDescriptor)> = others.to_vec();
    reflected.extend([v1, v1alpha]);
    let service = ReflectionService::new(ReflectionIndex::new(&reflected)?);
    Ok([
        (v1.0, v1.1, v1_api::register_server_reflection(service.clone(), runtime)),
        (v1alpha.0, v1alpha.1, v1alpha_api::register_server_reflection(service, runtime)),
    ])
}

/// What a file sends: its serialized `FileDescriptorProto` and the names of
/// the files it imports.
struct File {
    encoded: Vec<u8>,
    imports: Vec<String>,
}

/// What reflection knows, built once when the server starts; read-only after.
pub struct ReflectionIndex {
    /// Hosted services, sorted by name.
    services: Vec<String>,
    /// Every file that defines a hosted service, and all they import, by name.
    files: HashMap<String, File>,
    /// Fully qualified symbol (service, method, message, field, enum) to the
    /// name of the file that defines it.
    symbols: HashMap<String, String>,
    /// Fully qualified message names, which may be asked for their extensions.
    messages: HashSet<String>,
}

impl ReflectionIndex {
    /// Indexes `services` (full name, file defining it) and their files'
    /// imports, transitively.
    pub fn new(services: &[(&str, &FileDescriptor)]) -> Result<Self, String> {
        let mut index = ReflectionIndex {
            services: services.iter().map(|(name, _)| name.to_string()).collect(),
            files: HashMap::new(),
            symbols: HashMap::new(),
            messages: HashSet::new(),
        };
        index.services.sort();
        index.services.dedup();
        let mut pending: Vec<FileDescriptor> = services.iter().map(|(_, file)| (*file).clone()).collect();
        while let Some(file) = pending.pop() {
            if index.files.contains_key(file.name()) {
                continue;
            }
            let proto = file.proto();
            let encoded =
                proto.write_to_bytes().map_err(|e| format!("reflection: cannot encode {}: {e}", file.name()))?;
            index.add_symbols(file.name(), proto);
            index.files.insert(file.name().to_string(), File { encoded, imports: proto.dependency.clone() });
            pending.extend(file.deps().iter().cloned());
        }
        for service in &index.services {
            if !index.symbols.contains_key(service) {
                return Err(format!("reflection: no hosted file defines {service}"));
            }
        }
        Ok(index)
    }

    fn add_symbols(&mut self, file: &str, proto: &FileDescriptorProto) {
        let scope = |name: &str| match proto.package() {
            "" => name.to_string(),
            package => format!("{package}.{name}"),
        };
        for service in &proto.service {
            let service_name = scope(service.name());
            for method in &service.method {
                self.define(format!("{service_name}.{}", method.name()), file);
            }
            self.define(service_name, file);
        }
        for message in &proto.message_type {
            self.add_message(file, &scope(message.name()), message);
        }
        for enumeration in &proto.enum_type {
            self.define(scope(enumeration.name()), file);
        }
    }

    fn add_message(&mut self, file: &str, name: &str, message: &DescriptorProto) {
        for field in &message.field {
            self.define(format!("{name}.{}", field.name()), file);
        }
        for nested in &message.nested_type {
            self.add_message(file, &format!("{name}.{}", nested.name()), nested);
        }
        for enumeration in &message.enum_type {
            self.define(format!("{name}.{}", enumeration.name()), file);
        }
        self.messages.insert(name.to_string());
        self.define(name.to_string(), file);
    }

    /// The first file to define a symbol keeps it.
    fn define(&mut self, symbol: String, file: &str) {
        self.symbols.entry(symbol).or_insert_with(|| file.to_string());
    }

    /// The hosted services, sorted.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The answer to one request; `sent` holds the files this stream has
    /// already sent. A request that asks nothing ends the call.
    pub fn answer(
        &self,
        sent: &mut HashSet<String>,
        request: &ServerReflectionRequest,
    ) -> Result<ServerReflectionResponse, grpcio::RpcStatus> {
        let answer = match &request.message_request {
            Some(Request::ListServices(_)) => Response::ListServicesResponse(ListServiceResponse {
                service: self
                    .services
                    .iter()
                    .map(|name| ServiceResponse { name: name.clone(), ..Default::default() })
                    .collect(),
                ..Default::default()
            }),
            Some(Request::FileByFilename(name)) => match self.files.get(name) {
                Some(_) => self.file_with_imports(name, sent),
                None => not_found(format!("file {name:?} is not known to this server")),
            },
            Some(Request::FileContainingSymbol(symbol)) => match self.symbols.get(symbol) {
                Some(file) => self.file_with_imports(file, sent),
                None => not_found(format!("symbol {symbol:?} is not defined by any file this server hosts")),
            },
            Some(Request::FileContainingExtension(extension)) => not_found(format!(
                "extension {} of {:?}: this server defines no extensions",
                extension.extension_number, extension.containing_type
            )),
            Some(Request::AllExtensionNumbersOfType(message)) if self.messages.contains(message) => {
                Response::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: message.clone(),
                    extension_number: Vec::new(),
                    ..Default::default()
                })
            }
            Some(Request::AllExtensionNumbersOfType(message)) => {
                not_found(format!("message type {message:?} is not defined by any file this server hosts"))
            }
            None => {
                return Err(grpcio::RpcStatus::with_message(
                    RpcStatusCode::INVALID_ARGUMENT,
                    "a reflection request must set one of file_by_filename, file_containing_symbol, \
                     file_containing_extension, all_extension_numbers_of_type, list_services"
                        .to_string(),
                ))
            }
        };
        Ok(ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request.clone()).into(),
            message_response: Some(answer),
            ..Default::default()
        })
    }

    /// The file `name` (always: the client asked for it), then every file it
    /// imports, directly or not, that this stream has not sent yet.
    fn file_with_imports(&self, name: &str, sent: &mut HashSet<String>) -> Response {
        let mut encoded = Vec::new();
        let mut queue = VecDeque::from([name.to_string()]);
        sent.insert(name.to_string());
        while let Some(current) = queue.pop_front() {
            // Every name queued here was indexed: the requested one was looked
            // up, and imports of indexed files were indexed with them.
            let Some(file) = self.files.get(&current) else { continue };
            encoded.push(file.encoded.clone());
            for import in &file.imports {
                if sent.insert(import.clone()) {
                    queue.push_back(import.clone());
                }
            }
        }
        Response::FileDescriptorResponse(FileDescriptorResponse {
            file_descriptor_proto: encoded,
            ..Default::default()
        })
    }
}

fn not_found(message: String) -> Response {
    Response::ErrorResponse(ErrorResponse {
        error_code: RpcStatusCode::NOT_FOUND.into(),
        error_message: message,
        ..Default::default()
    })
}

/// Serves both reflection versions from one index; cheap to clone.
#[derive(Clone)]
pub struct ReflectionService {
    index: Arc<ReflectionIndex>,
}

impl ReflectionService {
    pub fn new(index: ReflectionIndex) -> Self {
        ReflectionService { index: Arc::new(index) }
    }
}

impl v1_api::ServerReflection for ReflectionService {
    /// Answers each request in order until the client closes its side.
    async fn server_reflection_info(
        &self,
        _call: &mut Call,
        requests: &mut RequestStream<ServerReflectionRequest>,
        sink: &mut DuplexSink<ServerReflectionResponse>,
    ) -> Result<(), CallError> {
        serve(&self.index, requests, sink).await
    }
}

impl v1alpha_api::ServerReflection for ReflectionService {
    /// The same answers, in v1alpha's messages (identical on the wire).
    async fn server_reflection_info(
        &self,
        _call: &mut Call,
        requests: &mut RequestStream<reflection_v1alpha::ServerReflectionRequest>,
        sink: &mut DuplexSink<reflection_v1alpha::ServerReflectionResponse>,
    ) -> Result<(), CallError> {
        serve(&self.index, requests, sink).await
    }
}

/// One reflection stream of either version: requests are read as v1
/// messages and responses written in the caller's version, by re-encoding
/// (both versions have the same fields and numbers).
async fn serve<Req: Message, Resp: Message>(
    index: &ReflectionIndex,
    requests: &mut RequestStream<Req>,
    sink: &mut DuplexSink<Resp>,
) -> Result<(), CallError> {
    let mut sent = HashSet::new();
    while let Some(request) = requests.try_next().await? {
        let request: ServerReflectionRequest = recode(&request)?;
        let response = index.answer(&mut sent, &request)?;
        sink.send((recode(&response)?, WriteFlags::default())).await?;
    }
    Ok(())
}

/// A message as another message type with the same fields.
fn recode<From: Message, To: Message>(message: &From) -> Result<To, CallError> {
    let internal = |e: protobuf::Error| CallError::new(RpcStatusCode::INTERNAL, format!("reflection: {e}"));
    To::parse_from_bytes(&message.write_to_bytes().map_err(internal)?).map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{greet, health};

    fn index() -> ReflectionIndex {
        ReflectionIndex::new(&[
            ("greet_service.GreetService", greet::file_descriptor()),
            ("grpc.health.v1.Health", health::file_descriptor()),
        ])
        .unwrap()
    }

    fn ask(index: &ReflectionIndex, sent: &mut HashSet<String>, request: Request) -> Response {
        let request = ServerReflectionRequest { message_request: Some(request), ..Default::default() };
        index.answer(sent, &request).unwrap().message_response.unwrap()
    }

    fn file_names(response: Response) -> Vec<String> {
        match response {
            Response::FileDescriptorResponse(files) => files
                .file_descriptor_proto
                .iter()
                .map(|bytes| {
                    protobuf::descriptor::FileDescriptorProto::parse_from_bytes(bytes).unwrap().name().to_string()
                })
                .collect(),
            other => panic!("want files, got {other:?}"),
        }
    }

    #[test]
    fn symbols_of_every_kind_lead_to_their_file() {
        let index = index();
        for symbol in [
            "greet_service.GreetService",
            "greet_service.GreetService.SayHelloBidirectionalStreaming",
            "greet_service.HelloRequest",
            "greet_service.HelloRequest.name",
            "grpc.health.v1.HealthCheckResponse.ServingStatus",
        ] {
            let response = ask(&index, &mut HashSet::new(), Request::FileContainingSymbol(symbol.to_string()));
            assert_eq!(file_names(response).len(), 1, "{symbol}");
        }
    }

    #[test]
    fn unknown_symbols_files_and_extensions_are_not_found_with_a_message() {
        let index = index();
        let mut sent = HashSet::new();
        let expected = [
            (
                Request::FileContainingSymbol("no.Such".into()),
                "symbol \"no.Such\" is not defined by any file this server hosts",
            ),
            (Request::FileByFilename("no.proto".into()), "file \"no.proto\" is not known to this server"),
            (
                Request::AllExtensionNumbersOfType("no.Such".into()),
                "message type \"no.Such\" is not defined by any file this server hosts",
            ),
        ];
        for (request, message) in expected {
            match ask(&index, &mut sent, request) {
                Response::ErrorResponse(e) => {
                    assert_eq!(e.error_code, 5);
                    assert_eq!(e.error_message, message);
                }
                other => panic!("want NOT_FOUND, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_file_comes_with_the_imports_this_stream_has_not_been_sent() {
        let index =
            ReflectionIndex::new(&[("grpc.testing.TestService", crate::proto::test::file_descriptor())]).unwrap();
        let mut sent = HashSet::new();
        let mut by_name = |name: &str| file_names(ask(&index, &mut sent, Request::FileByFilename(name.to_string())));
        assert_eq!(by_name("grpc/testing/messages.proto"), ["grpc/testing/messages.proto"]);
        assert_eq!(
            by_name("grpc/testing/test.proto"),
            ["grpc/testing/test.proto", "grpc/testing/empty.proto"],
            "messages.proto went out already"
        );
        assert_eq!(by_name("grpc/testing/test.proto"), ["grpc/testing/test.proto"], "asked again: only itself");
    }

    #[test]
    fn extensions_none_defined_a_known_message_has_none_and_asking_for_one_is_not_found() {
        let index = index();
        match ask(&index, &mut HashSet::new(), Request::AllExtensionNumbersOfType("greet_service.NamesList".into())) {
            Response::AllExtensionNumbersResponse(numbers) => {
                assert_eq!(numbers.base_type_name, "greet_service.NamesList");
                assert!(numbers.extension_number.is_empty());
            }
            other => panic!("want an empty list, got {other:?}"),
        }
        let extension = crate::proto::reflection_v1::ExtensionRequest {
            containing_type: "greet_service.NamesList".into(),
            extension_number: 100,
            ..Default::default()
        };
        match ask(&index, &mut HashSet::new(), Request::FileContainingExtension(extension)) {
            Response::ErrorResponse(e) => assert_eq!(
                (e.error_code, e.error_message.as_str()),
                (5, "extension 100 of \"greet_service.NamesList\": this server defines no extensions")
            ),
            other => panic!("want NOT_FOUND, got {other:?}"),
        }
    }

    #[test]
    fn list_services_names_every_hosted_service_sorted() {
        match ask(&index(), &mut HashSet::new(), Request::ListServices(String::new())) {
            Response::ListServicesResponse(list) => {
                let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, ["greet_service.GreetService", "grpc.health.v1.Health"]);
            }
            other => panic!("want the list, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_request_ends_the_call_with_invalid_argument() {
        let status = index().answer(&mut HashSet::new(), &ServerReflectionRequest::default()).unwrap_err();
        assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT);
    }
}
