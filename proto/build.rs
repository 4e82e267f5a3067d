//! Compiles the protobuf definitions with protox (pure Rust), so no system
//! `protoc` is needed.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "prism/control_plane.proto",
    "prism/launcher/v1/launcher.proto",
    "prism/launcher/launcher.proto",
    "prism/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    // The admin's embedded migrations (sqlx::migrate! reads them at build).
    println!("cargo:rerun-if-changed=src/admin/store/migrations");
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // For gRPC server reflection.
    std::fs::write(
        out.join("prism_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // JSON/YAML output and spec files use the wire names; unknown keys
        // in a spec file are errors, absent ones take their defaults.
        .message_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .compile_fds(fds)?;

    // An independent copy of the upstream protocol, for the compatibility
    // test's client (tests/upstream/); it never reaches the library.
    let upstream_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("tests/upstream");
    println!("cargo:rerun-if-changed={}", upstream_root.display());
    let upstream = protox::compile(
        ["prism/control_plane.proto", "prism/launcher/launcher.proto"],
        [&upstream_root],
    )?;
    let upstream_out = out.join("upstream");
    std::fs::create_dir_all(&upstream_out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&upstream_out)
        .compile_fds(upstream)?;
    Ok(())
}
