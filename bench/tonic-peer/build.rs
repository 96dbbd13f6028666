//! Server stubs for the two services the benchmark drives, from the main
//! crate's own .proto files (tonic-prost-build runs protoc).

fn main() {
    let protos = ["../../protos/greet.proto", "../../protos/helloworld.proto"];
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&protos, &["../../protos"])
        .unwrap_or_else(|e| panic!("cannot generate the tonic stubs: {e}"));
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
}
