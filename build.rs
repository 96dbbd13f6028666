//! Generates the protobuf messages and the grpcio service stubs for every
//! `.proto` file under `protos/` into `$OUT_DIR/protos/`, and links the
//! binaries for size (`link_for_size`).
//!
//! Messages come from `protobuf-codegen` (rust-protobuf 3, pure-Rust parser, no
//! `protoc`). grpcio's own stub generator (`grpcio-compiler`) only speaks
//! rust-protobuf 2, which carries RUSTSEC-2024-0437, so the stubs are written
//! here from the descriptors the same parser already produced: per service a
//! `Method` constant per RPC, a typed client, a `<SERVICE>_FULL_NAME`
//! constant, a server trait whose methods return the call's outcome and
//! default to UNIMPLEMENTED, and `register_<service>`, which hands every call
//! to the call runtime (`crate::rpc`). Requests are decoded by
//! `crate::rpc::codec`, which enforces the server's receive-size limit (the
//! core's own size filter is left out: it is costly).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use protobuf::descriptor::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

const PROTO_ROOT: &str = "protos";

fn main() {
    link_for_size();
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

    // Fully qualified message name (".pkg.Msg") -> Rust path below `crate::proto`.
    let mut rust_types = HashMap::new();
    for file in &parsed.file_descriptors {
        let Some(module) = modules.get(file.name()) else { continue };
        let prefix = match file.package() {
            "" => String::from("."),
            pkg => format!(".{pkg}."),
        };
        for message in &file.message_type {
            rust_types.insert(format!("{prefix}{}", message.name()), format!("{module}::{}", message.name()));
        }
    }

    // Per file with services: the client side next to the messages
    // (`<module>_grpc`, a leaf), the server side apart (`server/<module>.rs`,
    // included by `crate::rpc::api`, as it builds on the call runtime).
    let server_dir = out_dir.join("server");
    fs::create_dir_all(&server_dir).expect("create the generated server dir");
    let mut server_mod_rs = String::new();
    for file in &parsed.file_descriptors {
        let Some(module) = modules.get(file.name()) else { continue };
        if file.service.is_empty() {
            continue;
        }
        let client_types = rust_types.iter().map(|(k, v)| (k.clone(), format!("super::{v}"))).collect();
        let code = generated_file(file, true, |out, service| write_client(out, file.package(), service, &client_types));
        fs::write(out_dir.join(format!("{module}_grpc.rs")), code).expect("write generated stubs");
        writeln!(mod_rs, "pub mod {module}_grpc;").unwrap();

        let server_types = rust_types.iter().map(|(k, v)| (k.clone(), format!("crate::proto::{v}"))).collect();
        let code =
            generated_file(file, false, |out, service| write_server(out, file.package(), service, &server_types));
        fs::write(server_dir.join(format!("{module}.rs")), code).expect("write generated server side");
        writeln!(
            server_mod_rs,
            "/// The server side of `{}`.\n#[allow(dead_code, unused_imports, clippy::all)]\npub mod {module} {{\n    include!(concat!(env!(\"OUT_DIR\"), \"/protos/server/{module}.rs\"));\n}}",
            file.name()
        )
        .unwrap();
    }
    fs::write(out_dir.join("mod.rs"), mod_rs).expect("write mod.rs");
    fs::write(server_dir.join("mod.rs"), server_mod_rs).expect("write server/mod.rs");
}

/// The Rust module of each file: protobuf-codegen's name (the stem) when no
/// other file shares that stem, else the stem and the parent directory
/// (`reflection_v1`, `reflection_v1alpha`).
/// Smaller binaries at link time alone, so the gRPC C core is not rebuilt
/// (the image's size goal, docs/operations.md):
/// - relative relocations packed as DT_RELR (`-z pack-relative-relocs`;
///   binutils 2.38, glibc 2.36): the position-independent binaries' `.rela.dyn`
///   shrinks from about 0.9 MB to a few KB, and they stay position-independent;
/// - libstdc++, which only the C core uses, linked statically: the linker takes
///   the members the core needs instead of the whole 2.2 MB shared library.
///   grpcio-sys asks for `-lstdc++`; a directory holding only `libstdc++.a`
///   (a link to the compiler's own) on the search path makes that name resolve
///   to the archive, since the shared one lives only in the compiler's
///   directory, searched after every `-L`.
///
/// On a toolchain without the archive the link stays dynamic, with a warning.
fn link_for_size() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");

    let cxx = std::env::var("CXX").unwrap_or_else(|_| String::from("c++"));
    println!("cargo:rerun-if-env-changed=CXX");
    let archive = std::process::Command::new(&cxx)
        .arg("-print-file-name=libstdc++.a")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|path| path.is_absolute() && path.is_file());
    let Some(archive) = archive else {
        println!("cargo:warning={cxx} names no libstdc++.a: libstdc++ stays a shared library");
        return;
    };
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("static-libstdc++");
    fs::create_dir_all(&dir).expect("create the static libstdc++ dir");
    let link = dir.join("libstdc++.a");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&archive, &link).expect("link libstdc++.a");
    println!("cargo:rustc-link-search=native={}", dir.display());
}

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
            Pattern::Unary | Pattern::ServerStreaming => "crate::rpc::codec::de_request",
            Pattern::ClientStreaming | Pattern::Duplex => "crate::rpc::codec::de_stream_request",
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

/// A generated file; `inner_attributes` for a module file of its own (an
/// `include!`d file cannot have them: its module carries them instead).
fn generated_file(
    file: &FileDescriptorProto,
    inner_attributes: bool,
    mut write: impl FnMut(&mut String, &ServiceDescriptorProto),
) -> String {
    let mut out = String::new();
    writeln!(out, "// @generated by build.rs from {}. Do not edit.", file.name()).unwrap();
    if inner_attributes {
        writeln!(out, "#![allow(dead_code, unused_imports, clippy::all)]\n").unwrap();
    }
    for service in &file.service {
        write(&mut out, service);
    }
    out
}

/// The full name of a service and its RPCs, message types resolved through `types`.
fn rpcs_of(package: &str, service: &ServiceDescriptorProto, types: &HashMap<String, String>) -> (String, Vec<Rpc>) {
    let name = service.name();
    let full_name = if package.is_empty() { name.to_string() } else { format!("{package}.{name}") };
    let service_snake = snake_case(name);
    let lookup = |t: &str| {
        types
            .get(t)
            .cloned()
            .unwrap_or_else(|| panic!("{full_name}: message type {t} is not top-level in a parsed file"))
    };
    let rpcs = service
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
    (full_name, rpcs)
}

/// `pub const METHOD_...: ::grpcio::Method<..>` for each RPC; requests are
/// decoded by `request_decoder` (the server's limit-checking decoders, or
/// grpcio's own on the client side, which only encodes requests).
fn write_methods(out: &mut String, full_name: &str, rpcs: &[Rpc], request_decoder: impl Fn(Pattern) -> &'static str) {
    for rpc in rpcs {
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
            de = request_decoder(rpc.pattern),
        )
        .unwrap();
    }
}

/// A service's `<SERVICE>_FULL_NAME` constant and its `Method`s (see
/// [`write_methods`]); its full name and RPCs.
fn write_header(
    out: &mut String,
    package: &str,
    service: &ServiceDescriptorProto,
    types: &HashMap<String, String>,
    request_decoder: impl Fn(Pattern) -> &'static str,
) -> (String, Vec<Rpc>) {
    let (full_name, rpcs) = rpcs_of(package, service, types);
    writeln!(
        out,
        "/// The full name of `{full_name}`, as health checking and reflection name it.\n\
         pub const {}_FULL_NAME: &str = \"{full_name}\";\n",
        snake_case(service.name()).to_uppercase()
    )
    .unwrap();
    write_methods(out, &full_name, &rpcs, request_decoder);
    (full_name, rpcs)
}

fn write_client(out: &mut String, package: &str, service: &ServiceDescriptorProto, types: &HashMap<String, String>) {
    let name = service.name();
    let (full_name, rpcs) = write_header(out, package, service, types, |_| "::grpcio::pb_de");

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
}

/// The server side of a service: its `Method`s (decoding requests through the
/// server's limit-checking decoders, `crate::rpc::codec`), a trait with one
/// method per RPC that returns the call's outcome, and `register`, which
/// hands every call to the call runtime (`crate::rpc`): the runtime counts
/// the call, runs the handler's future on the completion queue and turns its
/// result into the reply or the status, named after the RPC. Handlers borrow
/// their request stream: grpcio cancels a call whose request stream is
/// dropped, so it lives until the call has ended.
fn write_server(out: &mut String, package: &str, service: &ServiceDescriptorProto, types: &HashMap<String, String>) {
    let name = service.name();
    let service_snake = snake_case(name);
    let (full_name, rpcs) = write_header(out, package, service, types, Pattern::request_decoder);

    writeln!(
        out,
        "/// Serves `{full_name}`. Each method returns its call's outcome: the reply, or\n\
         /// `Ok(())` once it has sent its stream; an error becomes the call's status.\n\
         /// A method not overridden answers UNIMPLEMENTED.\n\
         pub trait {name}: Clone + Send + Sync + 'static {{\n    \
             /// Whether handlers read `Call::request_headers` (copied per call only then).\n    \
             const READS_REQUEST_HEADERS: bool = false;\n"
    )
    .unwrap();
    for rpc in &rpcs {
        let (f, i, o, p) = (&rpc.fn_name, &rpc.input, &rpc.output, &rpc.proto_name);
        let (params, output) = match rpc.pattern {
            Pattern::Unary => (format!("request: {i}"), o.clone()),
            Pattern::ServerStreaming => {
                (format!("request: {i}, sink: &mut crate::rpc::ServerStreamingSink<{o}>"), "()".to_string())
            }
            Pattern::ClientStreaming => (format!("requests: &mut crate::rpc::RequestStream<{i}>"), o.clone()),
            Pattern::Duplex => (
                format!("requests: &mut crate::rpc::RequestStream<{i}>, sink: &mut crate::rpc::DuplexSink<{o}>"),
                "()".to_string(),
            ),
        };
        let unused = match rpc.pattern {
            Pattern::Unary => "request",
            Pattern::ServerStreaming => "(request, sink)",
            Pattern::ClientStreaming => "requests",
            Pattern::Duplex => "(requests, sink)",
        };
        writeln!(
            out,
            "    /// `{p}`.\n    \
             fn {f}(&self, call: &mut crate::rpc::Call, {params}) -> impl ::std::future::Future<Output = Result<{output}, crate::rpc::CallError>> + Send {{\n        \
                 let _ = (call, {unused});\n        \
                 ::std::future::ready(Err(crate::rpc::CallError::unimplemented(\"/{full_name}/{p}\")))\n    \
             }}"
        )
        .unwrap();
    }
    writeln!(out, "}}\n").unwrap();

    writeln!(
        out,
        "/// `service` as a grpcio service, its calls run by `runtime`.\n\
         pub fn register_{service_snake}<S: {name}>(service: S, runtime: &crate::rpc::Runtime) -> ::grpcio::Service {{\n    \
             let mut builder = ::grpcio::ServiceBuilder::new();"
    )
    .unwrap();
    for rpc in &rpcs {
        let (f, c) = (&rpc.fn_name, &rpc.constant);
        let (add, args, start, invoke, finish) = match rpc.pattern {
            Pattern::Unary => (
                "add_unary_handler",
                "req, sink",
                "let Some((mut call, sink)) = method.unary(&ctx, sink) else { return };",
                format!("service.{f}(&mut call, req).await"),
                "crate::rpc::finish_reply(call, sink, result).await;",
            ),
            Pattern::ServerStreaming => (
                "add_server_streaming_handler",
                "req, sink",
                "let Some((mut call, mut sink)) = method.server_streaming(&ctx, sink) else { return };",
                format!("service.{f}(&mut call, req, &mut sink).await"),
                "crate::rpc::finish_stream(call, sink, result).await;",
            ),
            Pattern::ClientStreaming => (
                "add_client_streaming_handler",
                "requests, sink",
                "let (mut call, mut requests, sink) = method.client_streaming(&ctx, requests, sink);",
                format!("service.{f}(&mut call, &mut requests).await"),
                "crate::rpc::finish_reply(call, sink, result).await;",
            ),
            Pattern::Duplex => (
                "add_duplex_streaming_handler",
                "requests, sink",
                "let (mut call, mut requests, mut sink) = method.duplex(&ctx, requests, sink);",
                format!("service.{f}(&mut call, &mut requests, &mut sink).await"),
                "crate::rpc::finish_stream(call, sink, result).await;",
            ),
        };
        writeln!(
            out,
            "    let (shared, method) = (service.clone(), runtime.method(&{c}, S::READS_REQUEST_HEADERS));\n    \
             builder = builder.{add}(&{c}, move |ctx, {args}| {{\n        \
                 {start}\n        \
                 let service = shared.clone();\n        \
                 ctx.spawn(async move {{\n            \
                     let result = {invoke};\n            \
                     {finish}\n        \
                 }});\n    \
             }});"
        )
        .unwrap();
    }
    writeln!(out, "    drop(service);\n    builder.build()\n}}\n").unwrap();
}
