//! The proxy-wasm serialization of a header map, read in place.
//!
//! `proxy_get_header_map_pairs` hands the VM one buffer: a little-endian u32
//! count, then per pair a u32 name length and a u32 value length, then each
//! name and each value followed by a NUL byte. The SDK's `get_map_bytes`
//! copies every name and value into its own allocation; reading the pairs as
//! slices of the buffer instead saves most of the filter's per-request Wasm
//! work on a request without routing context (bench/results/callgrind.md).

/// The (name, value) pairs of a serialized map, borrowed from `bytes`;
/// `None` if the buffer is not a well-formed serialization. An empty buffer
/// is an empty map.
pub fn pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    // Each pair takes at least 8 bytes of lengths and 2 NULs: a count the
    // buffer cannot hold is malformed (and must not size an allocation).
    if count.checked_mul(10)? > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    let mut data = 4 + count * 8;
    for i in 0..count {
        let name_len = read_u32(bytes, 4 + i * 8)?;
        let value_len = read_u32(bytes, 8 + i * 8)?;
        let (name, next) = terminated(bytes, data, name_len)?;
        let (value, next) = terminated(bytes, next, value_len)?;
        data = next;
        out.push((name, value));
    }
    Some(out)
}

/// `len` bytes at `at` followed by a NUL; returns them and where the next starts.
fn terminated(bytes: &[u8], at: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = at.checked_add(len)?;
    (bytes.get(end) == Some(&0)).then_some((bytes.get(at..end)?, end + 1))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serialization as Envoy writes it.
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend_from_slice(name);
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_what_envoy_writes() {
        let map: &[(&[u8], &[u8])] = &[
            (b":authority", b"backend"),
            (b"baggage", b"a=1"),
            (b"baggage", b""),
            (b"x-bytes", b"\xff\x00\xfe"),
        ];
        assert_eq!(pairs(&serialize(map)).unwrap(), map);
        assert_eq!(pairs(&[]).unwrap(), vec![]);
        assert_eq!(pairs(&serialize(&[])).unwrap(), vec![]);
    }

    #[test]
    fn malformed_buffers_are_refused() {
        let good = serialize(&[(b"name", b"value")]);
        for cut in 1..good.len() {
            assert_eq!(pairs(&good[..cut]), None, "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&huge), None);
        let mut long_name = good;
        long_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&long_name), None);
    }
}
