//! Reading an encoded `TableUpdate` without decoding a snapshot whole: the
//! snapshot's entries are handed over one at a time, still encoded, so the
//! table is built while at most one decoded entry exists. At 100,000 keys
//! the decoded snapshot alone is 20 MB, allocated next to the table being
//! built and then freed, and an allocator keeps such a peak's pages
//! (`tests/table_memory.rs` measures both).
//!
//! The walk follows protobuf's merge rules as prost applies them, so the
//! entries seen are exactly those of `TableUpdate::decode`: the last
//! occurrence of a scalar wins; a `snapshot` field seen again is merged into
//! the first (entries appended); unknown fields are skipped. A message that
//! also has a `delta` is left to a whole decode.

use bytes::Buf;
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::DecodeError;
use sandbox_router_routing::sync::ApplyError;

// Field numbers (proto/sandbox_router/v1/control.proto, table.proto).
const UPDATE_VERSION: u32 = 1;
const UPDATE_SNAPSHOT: u32 = 2;
const UPDATE_DELTA: u32 = 3;
const TABLE_VERSION: u32 = 1;
const TABLE_ENTRIES: u32 = 2;

/// Not a protobuf of the expected shape (refused as
/// [`ApplyError::Undecodable`], as a failed `TableUpdate::decode`).
#[derive(Debug)]
pub(crate) struct Malformed;

impl From<DecodeError> for Malformed {
    fn from(_: DecodeError) -> Self {
        Malformed
    }
}

impl From<Malformed> for ApplyError {
    fn from(_: Malformed) -> Self {
        ApplyError::Undecodable
    }
}

/// A snapshot update as it arrived: its version and the encoded
/// `RoutingTable` parts that make up its snapshot.
pub(crate) struct EncodedSnapshot<'b> {
    pub version: u64,
    parts: Vec<&'b [u8]>,
}

/// The update's snapshot, if it is one and nothing else (`None`: a delta,
/// an empty update, or a snapshot and a delta in one message, which no
/// control service writes: decode those whole). Walks only the top level.
pub(crate) fn snapshot(mut buf: &[u8]) -> Result<Option<EncodedSnapshot<'_>>, Malformed> {
    let mut version = 0;
    let mut parts = Vec::new();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            UPDATE_VERSION => version = varint(wire_type, &mut buf)?,
            UPDATE_SNAPSHOT => parts.push(length_delimited(wire_type, &mut buf)?),
            UPDATE_DELTA => return Ok(None),
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    Ok((!parts.is_empty()).then_some(EncodedSnapshot { version, parts }))
}

impl<'b> EncodedSnapshot<'b> {
    /// Calls `each` with every entry, encoded, in order; stops at the first
    /// error.
    pub fn for_each_entry(
        &self,
        mut each: impl FnMut(&'b [u8]) -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        for part in &self.parts {
            let mut buf: &'b [u8] = part;
            while buf.has_remaining() {
                let (tag, wire_type) = decode_key(&mut buf).map_err(Malformed::from)?;
                match tag {
                    TABLE_VERSION => {
                        varint(wire_type, &mut buf)?;
                    }
                    TABLE_ENTRIES => each(length_delimited(wire_type, &mut buf)?)?,
                    _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                        .map_err(Malformed::from)?,
                }
            }
        }
        Ok(())
    }
}

fn varint(wire_type: WireType, buf: &mut &[u8]) -> Result<u64, Malformed> {
    expect(wire_type, WireType::Varint)?;
    Ok(decode_varint(buf)?)
}

/// The field's bytes, `buf` moved past them.
fn length_delimited<'b>(wire_type: WireType, buf: &mut &'b [u8]) -> Result<&'b [u8], Malformed> {
    expect(wire_type, WireType::LengthDelimited)?;
    let len = decode_varint(buf)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= buf.len())
        .ok_or(Malformed)?;
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

fn expect(got: WireType, wanted: WireType) -> Result<(), Malformed> {
    (got == wanted).then_some(()).ok_or(Malformed)
}
