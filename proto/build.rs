//! Compiles `proto/enclave/v1/*.proto` with protox (pure Rust, no system `protoc`) and
//! writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/enclave/v1/job.proto",
        "proto/enclave/v1/executor.proto",
        "proto/enclave/v1/broker.proto",
        "proto/enclave/v1/tools.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("enclave_descriptor.bin"), &encoded)?;
    // Feature `json`: serde impls in the proto3 JSON mapping, from the same descriptors.
    // Unknown fields are skipped, as protobuf binary decoding skips them, so a JSON peer
    // gets the same forward compatibility as a gRPC one.
    #[cfg(feature = "json")]
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .ignore_unknown_fields()
        .build(&[".enclave.v1"])?;
    // src/codec.rs: a message that does not decode is INVALID_ARGUMENT, not INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProstCodec")
        .compile_fds(fds)?;
    Ok(())
}
