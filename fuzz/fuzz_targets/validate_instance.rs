//! Fuzz target: bytes from the network as a C-STORE data set. The first byte picks the transfer
//! syntax (explicit or implicit VR little endian); `validate` must answer, never panic, and
//! never allocate for a declared length past the data.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, dataset)) = data.split_first() else { return };
    let ts = if selector & 1 == 0 { "1.2.840.10008.1.2.1" } else { "1.2.840.10008.1.2" };
    let lengths_ok = noduled::server::store_scp::check_declared_lengths(dataset, selector & 1 == 0).is_ok();
    let result = noduled::server::store_scp::validate(dataset.to_vec(), ts, "", "");
    assert!(lengths_ok || result.is_err(), "impossible declared length accepted");
});
