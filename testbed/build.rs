//! Generates the gRPC echo service (server and client) of
//! `proto/echo/v1/echo.proto` with protox (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "echo/v1/echo.proto";
    println!("cargo:rerun-if-changed=proto/{file}");
    let descriptors = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Deterministic order in answers and tests.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
