//! Compiles `proto/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/websockets.proto", "proto/broadcast.proto", "proto/cluster.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // Envelope frames stay `Bytes`: slices of the received message, not copies.
    prost_build::Config::new().bytes([".ringcast.cluster"]).compile_fds(descriptors)?;
    Ok(())
}
