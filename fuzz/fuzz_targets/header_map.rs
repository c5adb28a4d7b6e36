//! The proxy-wasm header-map serialization the filter reads in place
//! (`routing::header_map::pairs`): a u32 count, u32 length pairs, then each
//! name and value followed by NUL.
//!
//! The input is tried twice: as a host buffer itself, and as `name: value`
//! lines (see `header_lines`) serialized here the way Envoy writes a map.
//! Invariants: `pairs` agrees with a model of the format (it refuses exactly
//! the buffers the model refuses, and reads the same pairs); a serialized map
//! reads back unchanged; the pairs read, with the names the filter keeps
//! (UTF-8), route soundly under the shipped configuration.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_router_fuzz::{header_lines, route_and_check, settings_once};
use sandbox_router_routing::header_map::pairs;

const SHIPPED: &[u8] = include_bytes!("../../envoy-config/filter-config.json");

fuzz_target!(|data: &[u8]| {
    static SETTINGS: OnceLock<sandbox_router_routing::Settings> = OnceLock::new();
    let settings = settings_once(&SETTINGS, SHIPPED);

    let read = pairs(data);
    assert_eq!(read, model(data), "{data:?}");
    if let Some(read) = &read {
        let headers: Vec<(&str, &[u8])> = read
            .iter()
            .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, *value)))
            .collect();
        route_and_check(settings, &headers, data.len());
    }

    let lines: Vec<(&[u8], &[u8])> = header_lines(data)
        .into_iter()
        .map(|(name, value)| (name.as_bytes(), value))
        .collect();
    let buffer = serialize(&lines);
    assert_eq!(pairs(&buffer).as_deref(), Some(lines.as_slice()));
    // Bytes after the last value are not part of the map.
    let mut padded = buffer;
    padded.extend_from_slice(b"\0trailing");
    if !lines.is_empty() {
        assert_eq!(pairs(&padded).as_deref(), Some(lines.as_slice()));
    }
});

/// The serialization as Envoy writes it.
fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).expect("fits").to_le_bytes();
    let mut out = len(pairs.len()).to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Reads the format step by step with a cursor: the lengths come first, the
/// NUL-terminated strings after all of them; anything missing is malformed.
fn model(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let word = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes(word.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut lengths = Vec::new();
    for i in 0..count {
        let at = 4 + 8 * i;
        if at + 8 > bytes.len() {
            return None;
        }
        lengths.push((u32_at(at)?, u32_at(at + 4)?));
    }
    let mut cursor = 4 + 8 * count;
    let mut take = |len: usize| -> Option<&[u8]> {
        let s = bytes.get(cursor..cursor.checked_add(len)?)?;
        cursor += len;
        (bytes.get(cursor) == Some(&0)).then_some(())?;
        cursor += 1;
        Some(s)
    };
    let mut out = Vec::new();
    for (name_len, value_len) in lengths {
        let name = take(name_len)?;
        let value = take(value_len)?;
        out.push((name, value));
    }
    Some(out)
}
