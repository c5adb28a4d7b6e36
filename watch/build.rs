//! Generates the gRPC client for `control.proto` (the control service
//! generates the server the same way, in `control/build.rs`); the messages
//! themselves come from `sandbox-router-proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../proto/proto";
    let file = "sandbox_router/v1/control.proto";
    println!("cargo:rerun-if-changed={root}/{file}");
    let descriptors = protox::compile([file], [root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .extern_path(".sandbox_router.v1", "::sandbox_router_proto::v1")
        .compile_fds(descriptors)?;
    Ok(())
}
