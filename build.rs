//! Generates the protobuf messages and the grpcio service stubs for every
//! `.proto` file under `protos/` into `$OUT_DIR/protos/`.
//!
//! Messages come from `protobuf-codegen` (rust-protobuf 3, pure-Rust parser, no
//! `protoc`). grpcio's own stub generator (`grpcio-compiler`) only speaks
//! rust-protobuf 2, which carries RUSTSEC-2024-0437, so the stubs are written
//! here from the descriptors the same parser already produced: per service a
//! `Method` constant per RPC, a typed client, a server trait whose methods
//! default to UNIMPLEMENTED, a `<SERVICE>_FULL_NAME` constant and
//! `create_<service>` / `create_<service>_with`: the latter runs the server's
//! one per-call hook (`crate::services::CallHooks`) before every handler, and
//! hands handlers the sinks and request streams of `crate::call`, which count
//! every call in the hooks' metrics (`crate::metrics`). Requests are decoded
//! by `crate::codec`, which enforces the server's receive-size limit (the
//! core's own size filter is left out: it is costly).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use protobuf::descriptor::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

const PROTO_ROOT: &str = "protos";

fn main() {
    let inputs = proto_files(Path::new(PROTO_ROOT));
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("protos");

    if out_dir.exists() {
        fs::remove_dir_all(&out_dir).expect("clear generated protos");
    }
    fs::create_dir_all(&out_dir).expect("create generated protos dir");

    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include(PROTO_ROOT)
        .inputs(&inputs)
        .parse_and_typecheck()
        .unwrap_or_else(|e| panic!("cannot parse {PROTO_ROOT}/: {e:#}"));
    let modules = rust_modules(&parsed.relative_paths.iter().map(|p| p.to_str().to_string()).collect::<Vec<_>>());

    // protobuf-codegen names a file's module after its stem alone, so files
    // sharing a stem (grpc/reflection/v1/reflection.proto and
    // .../v1alpha/reflection.proto) are generated one at a time and renamed.
    let (plain, renamed): (Vec<&PathBuf>, Vec<&PathBuf>) = inputs.iter().partition(|input| {
        let relative = input.strip_prefix(PROTO_ROOT).expect("inputs are below PROTO_ROOT");
        modules[relative.to_str().expect("UTF-8 path")] == rust_module(relative.to_str().expect("UTF-8 path"))
    });
    protobuf_codegen::Codegen::new().pure().include(PROTO_ROOT).inputs(&plain).out_dir(&out_dir).run_from_script();
    let mut mod_rs = fs::read_to_string(out_dir.join("mod.rs")).expect("protobuf-codegen writes mod.rs");
    for input in renamed {
        let relative = input.strip_prefix(PROTO_ROOT).expect("inputs are below PROTO_ROOT").to_str().expect("UTF-8");
        let module = &modules[relative];
        if let Some(user) = parsed.file_descriptors.iter().find(|f| f.dependency.iter().any(|d| d == relative)) {
            panic!(
                "{} imports {relative}, whose generated module is renamed to {module}: rename one of them",
                user.name()
            );
        }
        let tmp = out_dir.join(format!(".{module}"));
        fs::create_dir_all(&tmp).expect("create a generation dir");
        protobuf_codegen::Codegen::new().pure().include(PROTO_ROOT).input(input).out_dir(&tmp).run_from_script();
        fs::rename(tmp.join(format!("{}.rs", rust_module(relative))), out_dir.join(format!("{module}.rs")))
            .expect("move the generated module");
        fs::remove_dir_all(&tmp).expect("remove the generation dir");
        writeln!(mod_rs, "pub mod {module};").unwrap();
    }

    // Fully qualified message name (".pkg.Msg") -> Rust path from a sibling module.
    let mut rust_types = HashMap::new();
    for file in &parsed.file_descriptors {
        let Some(module) = modules.get(file.name()) else { continue };
        let prefix = match file.package() {
            "" => String::from("."),
            pkg => format!(".{pkg}."),
        };
        for message in &file.message_type {
            rust_types.insert(format!("{prefix}{}", message.name()), format!("super::{module}::{}", message.name()));
        }
    }

    for file in &parsed.file_descriptors {
        let Some(module) = modules.get(file.name()) else { continue };
        if file.service.is_empty() {
            continue;
        }
        let module = format!("{module}_grpc");
        let code = grpc_module(file, &rust_types);
        fs::write(out_dir.join(format!("{module}.rs")), code).expect("write generated stubs");
        writeln!(mod_rs, "pub mod {module};").unwrap();
    }
    fs::write(out_dir.join("mod.rs"), mod_rs).expect("write mod.rs");
}

/// The Rust module of each file: protobuf-codegen's name (the stem) when no
/// other file shares that stem, else the stem and the parent directory
/// (`reflection_v1`, `reflection_v1alpha`).
fn rust_modules(proto_paths: &[String]) -> HashMap<String, String> {
    let mut stems: HashMap<String, usize> = HashMap::new();
    for path in proto_paths {
        *stems.entry(rust_module(path)).or_default() += 1;
    }
    proto_paths
        .iter()
        .map(|path| {
            let stem = rust_module(path);
            let module = if stems[&stem] == 1 {
                stem
            } else {
                let parent =
                    Path::new(path).parent().and_then(|p| p.file_name()).and_then(|p| p.to_str()).unwrap_or("");
                rust_module(&format!("{stem}_{parent}"))
            };
            (path.clone(), module)
        })
        .collect()
}

/// Every `.proto` below `dir`, sorted so that the generated code is stable.
fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The module name protobuf-codegen gives a file: its stem, made an identifier.
fn rust_module(proto_path: &str) -> String {
    let stem = Path::new(proto_path).file_stem().and_then(|s| s.to_str()).unwrap_or(proto_path);
    stem.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Pattern {
    Unary,
    ServerStreaming,
    ClientStreaming,
    Duplex,
}

impl Pattern {
    fn of(method: &MethodDescriptorProto) -> Self {
        match (method.client_streaming(), method.server_streaming()) {
            (false, false) => Pattern::Unary,
            (false, true) => Pattern::ServerStreaming,
            (true, false) => Pattern::ClientStreaming,
            (true, true) => Pattern::Duplex,
        }
    }

    /// How the server decodes this method's requests (see src/codec.rs).
    fn request_decoder(self) -> &'static str {
        match self {
            Pattern::Unary | Pattern::ServerStreaming => "crate::codec::de_request",
            Pattern::ClientStreaming | Pattern::Duplex => "crate::codec::de_stream_request",
        }
    }

    fn method_type(self) -> &'static str {
        match self {
            Pattern::Unary => "Unary",
            Pattern::ServerStreaming => "ServerStreaming",
            Pattern::ClientStreaming => "ClientStreaming",
            Pattern::Duplex => "Duplex",
        }
    }
}

struct Rpc {
    proto_name: String,
    fn_name: String,
    constant: String,
    input: String,
    output: String,
    pattern: Pattern,
}

fn grpc_module(file: &FileDescriptorProto, types: &HashMap<String, String>) -> String {
    let mut out = String::new();
    writeln!(out, "// @generated by build.rs from {}. Do not edit.", file.name()).unwrap();
    writeln!(out, "#![allow(dead_code, unused_imports, clippy::all)]\n").unwrap();
    for service in &file.service {
        write_service(&mut out, file.package(), service, types);
    }
    out
}

fn write_service(out: &mut String, package: &str, service: &ServiceDescriptorProto, types: &HashMap<String, String>) {
    let name = service.name();
    let full_name = if package.is_empty() { name.to_string() } else { format!("{package}.{name}") };
    let service_snake = snake_case(name);
    let lookup = |t: &str| {
        types
            .get(t)
            .cloned()
            .unwrap_or_else(|| panic!("{full_name}: message type {t} is not top-level in a parsed file"))
    };
    let rpcs: Vec<Rpc> = service
        .method
        .iter()
        .map(|m| Rpc {
            proto_name: m.name().to_string(),
            fn_name: snake_case(m.name()),
            constant: format!("METHOD_{}_{}", service_snake.to_uppercase(), snake_case(m.name()).to_uppercase()),
            input: lookup(m.input_type()),
            output: lookup(m.output_type()),
            pattern: Pattern::of(m),
        })
        .collect();

    writeln!(
        out,
        "/// The full name of `{full_name}`, as health checking and reflection name it.\n\
         pub const {}_FULL_NAME: &str = \"{full_name}\";\n",
        service_snake.to_uppercase()
    )
    .unwrap();
    for rpc in &rpcs {
        writeln!(
            out,
            "/// `/{full_name}/{p}`.\n\
             pub const {c}: ::grpcio::Method<{i}, {o}> = ::grpcio::Method {{\n    \
                ty: ::grpcio::MethodType::{ty},\n    \
                name: \"/{full_name}/{p}\",\n    \
                req_mar: ::grpcio::Marshaller {{ ser: ::grpcio::pb_ser, de: {de} }},\n    \
                resp_mar: ::grpcio::Marshaller {{ ser: ::grpcio::pb_ser, de: ::grpcio::pb_de }},\n\
             }};\n",
            p = rpc.proto_name,
            c = rpc.constant,
            i = rpc.input,
            o = rpc.output,
            ty = rpc.pattern.method_type(),
            de = rpc.pattern.request_decoder(),
        )
        .unwrap();
    }

    // Client.
    writeln!(
        out,
        "/// Client for `{full_name}`.\n\
         #[derive(Clone)]\n\
         pub struct {name}Client {{\n    pub client: ::grpcio::Client,\n}}\n\n\
         impl {name}Client {{\n    \
             pub fn new(channel: ::grpcio::Channel) -> Self {{\n        \
                 {name}Client {{ client: ::grpcio::Client::new(channel) }}\n    \
             }}\n\n    \
             /// Runs a future on the client's completion queue.\n    \
             pub fn spawn<F>(&self, f: F)\n    where\n        F: ::std::future::Future<Output = ()> + Send + 'static,\n    {{\n        \
                 self.client.spawn(f)\n    \
             }}\n"
    )
    .unwrap();
    for rpc in &rpcs {
        let (f, c, i, o) = (&rpc.fn_name, &rpc.constant, &rpc.input, &rpc.output);
        match rpc.pattern {
            Pattern::Unary => write!(
                out,
                "\n    pub fn {f}_opt(&self, req: &{i}, opt: ::grpcio::CallOption) -> ::grpcio::Result<{o}> {{\n        \
                     self.client.unary_call(&{c}, req, opt)\n    }}\n\n    \
                 pub fn {f}(&self, req: &{i}) -> ::grpcio::Result<{o}> {{\n        \
                     self.{f}_opt(req, ::grpcio::CallOption::default())\n    }}\n\n    \
                 pub fn {f}_async_opt(&self, req: &{i}, opt: ::grpcio::CallOption) -> ::grpcio::Result<::grpcio::ClientUnaryReceiver<{o}>> {{\n        \
                     self.client.unary_call_async(&{c}, req, opt)\n    }}\n\n    \
                 pub fn {f}_async(&self, req: &{i}) -> ::grpcio::Result<::grpcio::ClientUnaryReceiver<{o}>> {{\n        \
                     self.{f}_async_opt(req, ::grpcio::CallOption::default())\n    }}\n"
            ),
            Pattern::ServerStreaming => write!(
                out,
                "\n    pub fn {f}_opt(&self, req: &{i}, opt: ::grpcio::CallOption) -> ::grpcio::Result<::grpcio::ClientSStreamReceiver<{o}>> {{\n        \
                     self.client.server_streaming(&{c}, req, opt)\n    }}\n\n    \
                 pub fn {f}(&self, req: &{i}) -> ::grpcio::Result<::grpcio::ClientSStreamReceiver<{o}>> {{\n        \
                     self.{f}_opt(req, ::grpcio::CallOption::default())\n    }}\n"
            ),
            Pattern::ClientStreaming => write!(
                out,
                "\n    pub fn {f}_opt(&self, opt: ::grpcio::CallOption) -> ::grpcio::Result<(::grpcio::ClientCStreamSender<{i}>, ::grpcio::ClientCStreamReceiver<{o}>)> {{\n        \
                     self.client.client_streaming(&{c}, opt)\n    }}\n\n    \
                 pub fn {f}(&self) -> ::grpcio::Result<(::grpcio::ClientCStreamSender<{i}>, ::grpcio::ClientCStreamReceiver<{o}>)> {{\n        \
                     self.{f}_opt(::grpcio::CallOption::default())\n    }}\n"
            ),
            Pattern::Duplex => write!(
                out,
                "\n    pub fn {f}_opt(&self, opt: ::grpcio::CallOption) -> ::grpcio::Result<(::grpcio::ClientDuplexSender<{i}>, ::grpcio::ClientDuplexReceiver<{o}>)> {{\n        \
                     self.client.duplex_streaming(&{c}, opt)\n    }}\n\n    \
                 pub fn {f}(&self) -> ::grpcio::Result<(::grpcio::ClientDuplexSender<{i}>, ::grpcio::ClientDuplexReceiver<{o}>)> {{\n        \
                     self.{f}_opt(::grpcio::CallOption::default())\n    }}\n"
            ),
        }
        .unwrap();
    }
    writeln!(out, "}}\n").unwrap();

    // Server trait: every method defaults to UNIMPLEMENTED. Handlers get the
    // sinks and request streams of `crate::call`, which measure the call.
    writeln!(
        out,
        "/// Server side of `{full_name}`; every method not overridden answers UNIMPLEMENTED.\npub trait {name} {{"
    )
    .unwrap();
    for rpc in &rpcs {
        let (f, i, o) = (&rpc.fn_name, &rpc.input, &rpc.output);
        let (req, sink) = match rpc.pattern {
            Pattern::Unary => (i.clone(), format!("crate::call::UnarySink<{o}>")),
            Pattern::ServerStreaming => (i.clone(), format!("crate::call::ServerStreamingSink<{o}>")),
            Pattern::ClientStreaming => {
                (format!("crate::call::RequestStream<{i}>"), format!("crate::call::ClientStreamingSink<{o}>"))
            }
            Pattern::Duplex => (format!("crate::call::RequestStream<{i}>"), format!("crate::call::DuplexSink<{o}>")),
        };
        writeln!(
            out,
            "    fn {f}(&mut self, ctx: ::grpcio::RpcContext, _req: {req}, sink: {sink}) {{\n        \
                 crate::call::unimplemented(ctx, sink, \"/{full_name}/{p}\")\n    }}",
            p = rpc.proto_name
        )
        .unwrap();
    }
    writeln!(out, "}}\n").unwrap();

    writeln!(
        out,
        "/// Wraps a `{name}` implementation into a service to register on a `ServerBuilder`.\n\
         pub fn create_{service_snake}<S: {name} + Send + Clone + 'static>(s: S) -> ::grpcio::Service {{\n    \
             create_{service_snake}_with(s, crate::services::CallHooks::default())\n\
         }}\n\n\
         /// Like `create_{service_snake}`, with `hooks` run before every handler\n\
         /// and every call counted in the hooks' metrics.\n\
         pub fn create_{service_snake}_with<S: {name} + Send + Clone + 'static>(s: S, hooks: crate::services::CallHooks) -> ::grpcio::Service {{\n    \
             let mut builder = ::grpcio::ServiceBuilder::new();"
    )
    .unwrap();
    for rpc in &rpcs {
        let f = &rpc.fn_name;
        // A single request over the receive limit was decoded as empty; the
        // call is failed here, before the handler sees it (src/codec.rs).
        let single = |wrap: &str| {
            format!(
                "let sink = crate::call::{wrap}(sink, &method);\n        \
                 if let Some(status) = crate::codec::take_rejected() {{\n            \
                     return crate::codec::fail_rejected(&ctx, sink, status);\n        \
                 }}\n        \
                 instance.{f}(ctx, req, sink)"
            )
        };
        let (add, invoke) = match rpc.pattern {
            Pattern::Unary => ("add_unary_handler", single("unary")),
            Pattern::ServerStreaming => ("add_server_streaming_handler", single("server_streaming")),
            Pattern::ClientStreaming => (
                "add_client_streaming_handler",
                format!(
                    "let (req, sink) = crate::call::client_streaming(req, sink, &method);\n        \
                     instance.{f}(ctx, req, sink)"
                ),
            ),
            Pattern::Duplex => (
                "add_duplex_streaming_handler",
                format!(
                    "let (req, sink) = crate::call::duplex(req, sink, &method);\n        \
                     instance.{f}(ctx, req, sink)"
                ),
            ),
        };
        writeln!(
            out,
            "    let mut instance = s.clone();\n    \
             let call_hooks = hooks.clone();\n    \
             let method = hooks.metrics().method(&{c});\n    \
             builder = builder.{add}(&{c}, move |ctx, req, mut sink| {{\n        \
                 call_hooks.on_call(&ctx, &mut sink);\n        \
                 {invoke}\n    \
             }});",
            c = rpc.constant,
        )
        .unwrap();
    }
    writeln!(out, "    drop(s);\n    builder.build()\n}}\n").unwrap();
}
