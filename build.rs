//! Generates the agent's node-local gRPC API from `proto/prepuller/v1/agent.proto`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/prepuller/v1/agent.proto";
    // Otherwise Cargo reruns this (and protoc) on every change anywhere in the package.
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[PROTO], &["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("prepuller.v1.rs");
    let code = std::fs::read_to_string(&out)?;
    std::fs::write(&out, use_reexported_prost(&code))?;
    Ok(())
}

/// prost-build writes `::prost::…` paths, but `prost` is not a direct dependency: point the
/// generated code, and prost's derives (their `prost_path` helper, which must follow the
/// derive), at tonic-prost's re-export.
fn use_reexported_prost(code: &str) -> String {
    const PROST: &str = "::tonic_prost::prost";
    let mut out = String::with_capacity(code.len() * 2);
    for line in code.lines() {
        let line = line.replace("::prost::", &format!("{PROST}::"));
        out.push_str(&line);
        out.push('\n');
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[derive(") && line.contains(&format!("{PROST}::")) {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}#[prost(prost_path = \"{PROST}\")]\n"));
        }
    }
    out
}
