//! Compiles the `.proto` files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sandbox_router/v1/overrides.proto",
        "proto/sandbox_router/v1/table.proto",
        "proto/sandbox_router/v1/control.proto",
        "proto/lightstep/carrier.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // BTreeMap keeps encoding deterministic (the CLI mints headers from these).
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
