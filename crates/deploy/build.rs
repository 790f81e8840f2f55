//! Compiles `proto/fluxmoe.proto` with protox (pure Rust, so building needs no system
//! `protoc`) and generates the tonic client and server from its descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/fluxmoe.proto");
    let fds = protox::compile(["fluxmoe.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
