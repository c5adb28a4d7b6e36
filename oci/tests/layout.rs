//! The image layout is what OCI tools and Istio's fetcher expect: every blob
//! is named by its digest, the manifest points at one gzip layer holding
//! exactly `plugin.wasm`, and the digest depends only on the .wasm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::Path;

use sandbox_router_oci::{sha256_hex, write_layout, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use serde_json::Value;

const WASM: &[u8] = b"\0asm\x01\0\0\0 a stand-in module for the layout test";

/// Reads blob `digest`, checking that its name is its SHA-256 and its size.
fn blob(dir: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(sha256_hex(&bytes), hex, "{digest}");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "{digest}"
    );
    bytes
}

#[test]
fn the_layout_holds_one_layer_with_plugin_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_layout(WASM, "0.1.0", dir.path()).unwrap();
    assert_eq!(image.wasm_sha256, sha256_hex(WASM));

    let layout: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(entry["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(entry["digest"], image.digest);
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "0.1.0"
    );

    let manifest: Value = serde_json::from_slice(&blob(dir.path(), entry)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    let config: Value = serde_json::from_slice(&blob(dir.path(), &manifest["config"])).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);

    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob(dir.path(), &layers[0]).as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", sha256_hex(&tar))
    );
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        entries.push((path, bytes));
    }
    assert_eq!(entries, vec![("plugin.wasm".to_owned(), WASM.to_vec())]);
}

#[test]
fn the_digest_depends_on_the_wasm_only() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let first = write_layout(WASM, "0.1.0", a.path()).unwrap();
    let again = write_layout(WASM, "other-tag", b.path()).unwrap();
    assert_eq!(first, again);
    let changed = write_layout(b"\0asm\x01\0\0\0 changed", "0.1.0", c.path()).unwrap();
    assert_ne!(first.digest, changed.digest);
}
