//! Generates the agent's node-local gRPC API from `proto/prepuller/v1/agent.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/prepuller/v1/agent.proto";
    // Otherwise Cargo reruns this (and protoc) on every change anywhere in the package.
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[PROTO], &["proto"])?;
    Ok(())
}
