//! The filter as an OCI image that Istio's `WasmPlugin` can pull (`oci://`),
//! written as an OCI image layout (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>)
//! without a container engine.
//!
//! The image is the "compat" variant of the Wasm image specification Istio
//! reads: a standard OCI image whose single layer holds `plugin.wasm`. Any
//! registry and any OCI tool can store and copy it (`crane push`, `oras`,
//! `skopeo copy oci:...`). Istio also reads the artifact variant, but not
//! every registry accepts artifact media types.
//!
//! The output is reproducible: the same `.wasm` gives the same image digest
//! (fixed tar metadata, no timestamps), so a `WasmPlugin` can pin it.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// File name Istio's image fetcher looks for in the layer.
pub const WASM_FILE_NAME: &str = "plugin.wasm";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<hex>` of the manifest: the image digest a `WasmPlugin` pins.
    pub digest: String,
    /// SHA-256 of the `.wasm` itself (what the `https://` option pins).
    pub wasm_sha256: String,
}

/// Writes an OCI image layout holding `wasm` to `dir` (created; existing
/// blobs are overwritten), tagged `tag` in `index.json`.
pub fn write_layout(wasm: &[u8], tag: &str, dir: &Path) -> Result<Image> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let write_blob = |bytes: &[u8]| -> Result<String> {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok(format!("sha256:{hex}"))
    };

    let tar = layer_tar(wasm)?;
    let layer = gzip(&tar)?;
    let layer_digest = write_blob(&layer)?;
    let config = serde_json::to_vec(&json!({
        // The Wasm image specification's compat variant; no platform applies.
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))] },
        "config": {},
    }))?;
    let config_digest = write_blob(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len() },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_digest,
            "size": layer.len(),
            "annotations": { "org.opencontainers.image.title": WASM_FILE_NAME },
        }],
        "annotations": {
            "org.opencontainers.image.title": "sandbox-router-filter",
            "org.opencontainers.image.description": "sandbox-router proxy-wasm HTTP filter",
        },
    }))?;
    let digest = write_blob(&manifest)?;
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    }))?;
    std::fs::write(dir.join("index.json"), index)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Image {
        digest,
        wasm_sha256: sha256_hex(wasm),
    })
}

/// A tar holding only `plugin.wasm`, with fixed metadata.
fn layer_tar(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, WASM_FILE_NAME, wasm)?;
    Ok(builder.into_inner()?)
}

/// gzip without a timestamp or file name, so the bytes depend on the input only.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
