//! Pushed `TableUpdate` messages, as the singleton receives them on the watch
//! stream: the input is split at `MESSAGE_SEPARATOR` into messages applied in
//! order with `PushedTable::apply`, writing to in-memory shared data. An
//! empty message restarts the singleton (`PushedTable::resume` from the
//! index in shared data).
//!
//! Invariants (`SyncCheck`): a refused update changes nothing and is refused
//! for a reason that fits it (a valid snapshot or delta is never refused);
//! after an accepted update, shared data holds exactly the model table (no
//! stale key, sandbox or service entry; the index lists exactly the present
//! entries; the version is set) and every lookup through shared data equals
//! the same table compiled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_router_fuzz::{split_on, SyncCheck, MESSAGE_SEPARATOR};

fuzz_target!(|data: &[u8]| {
    let mut check = SyncCheck::new();
    for message in split_on(data, MESSAGE_SEPARATOR) {
        if message.is_empty() {
            check.reload();
        } else {
            check.apply(message);
        }
    }
});
