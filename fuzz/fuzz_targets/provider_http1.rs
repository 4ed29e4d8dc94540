//! A provider's HTTP/1.1 response as the lean plain-http client reads it: status line, headers,
//! framing (a length, chunked with extensions and trailers, or to the close) and the size cap.
//! Nothing may panic, and reading the input in two parts — cut where its first byte says —
//! must give exactly what reading it whole gives, since a socket may split it anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;

use agentfleet_common::outbound::read_received;

/// Small, so the cap is reached by inputs the fuzzer makes.
const LIMIT: usize = 512;

fuzz_target!(|wire: &[u8]| {
    let whole = read_received(&[wire], LIMIT);
    let cut = wire.first().map_or(0, |b| usize::from(*b) % (wire.len() + 1));
    let parts = read_received(&[&wire[..cut], &wire[cut..]], LIMIT);
    assert_eq!(format!("{parts:?}"), format!("{whole:?}"), "cut at {cut}");
});
