//! Compiles the protobuf definitions with protox (pure Rust), so no system
//! `protoc` is needed.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "prism/control_plane.proto",
    "prism/launcher/v1/launcher.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // For gRPC server reflection.
    std::fs::write(
        out.join("prism_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
