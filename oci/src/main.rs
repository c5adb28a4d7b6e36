//! `sandbox-router-oci WASM OUT_DIR [TAG]`: writes the filter as an OCI image
//! layout and prints its digest (see the library docs).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(wasm), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: sandbox-router-oci WASM OUT_DIR [TAG]");
        return ExitCode::from(2);
    };
    let tag = args
        .get(2)
        .map_or(env!("CARGO_PKG_VERSION"), String::as_str);
    let result = std::fs::read(wasm)
        .map_err(|e| anyhow::anyhow!("reading {wasm}: {e}"))
        .and_then(|bytes| sandbox_router_oci::write_layout(&bytes, tag, &PathBuf::from(out)));
    match result {
        Ok(image) => {
            println!("OCI image layout: {out} (tag {tag})");
            println!("image digest:     {}", image.digest);
            println!("wasm sha256:      {}", image.wasm_sha256);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("sandbox-router-oci: {err:#}");
            ExitCode::FAILURE
        }
    }
}
