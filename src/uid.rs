//! DICOM unique identifiers (UIDs) for everything noduled writes: phantom studies, series and
//! images, and later the daemon's Structured Reports.
//!
//! All our UIDs live under one project root, [`ROOT`], which is a `2.25` UUID-derived OID
//! (DICOM PS3.5 §B.2): `2.25.` followed by the decimal value of the random UUID
//! `1fd31adf-a9c8-467c-99f6-9d58fb24093d`, drawn once for this project and frozen here. The arc
//! under a `2.25` UUID root belongs to whoever drew the UUID, so we may append our own components.
//! The UUID was picked so that its decimal form has 38 digits: the root is 43 characters, which
//! leaves room for one more component of up to 20 digits inside DICOM's 64-character limit.
//!
//! * `ROOT.1` is the Implementation Class UID of our file meta headers.
//! * [`derived`] hashes its parts with SHA-256 and appends 64 bits of the hash (top bit forced on,
//!   so the component is 19–20 digits and never collides with the small fixed arcs above). Same
//!   parts → same UID: this is what makes phantoms byte-for-byte reproducible from a seed.
//! * [`generate`] appends 64 bits from the OS-seeded thread RNG mixed with the clock, a process
//!   counter and the process id: unique UIDs for things that must never repeat (daemon output).

use rand::Rng;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The project UID root: `2.25.<decimal of UUID 1fd31adf-a9c8-467c-99f6-9d58fb24093d>`.
pub const ROOT: &str = "2.25.42302187569558261001890795785138997565";

/// Implementation Class UID (0002,0012) of every file noduled writes.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.42302187569558261001890795785138997565.1";

/// Implementation Version Name (0002,0013) of every file noduled writes.
pub const IMPLEMENTATION_VERSION_NAME: &str = "NODULED_0_1";

/// A deterministic UID under [`ROOT`]: SHA-256 over the parts (each prefixed with its length, so
/// `["ab", "c"]` and `["a", "bc"]` differ), rendered as one decimal component of 19–20 digits.
pub fn derived(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"noduled-uid-v1");
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    under_root(u64::from_be_bytes(first))
}

/// A fresh, unique UID under [`ROOT`] (random; never the same twice in practice).
pub fn generate() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random: u128 = rand::rng().random();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = Sha256::new();
    hasher.update(b"noduled-uid-random-v1");
    hasher.update(random.to_le_bytes());
    hasher.update(nanos.to_le_bytes());
    hasher.update(count.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    under_root(u64::from_be_bytes(first))
}

/// Whether `uid` is a syntactically valid DICOM UID: 1–64 characters, digits and dots only,
/// non-empty components, and no component with a leading zero (a lone `0` is fine).
pub fn is_valid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|component| {
            !component.is_empty()
                && component.bytes().all(|b| b.is_ascii_digit())
                && (component == "0" || !component.starts_with('0'))
        })
}

fn under_root(bits: u64) -> String {
    // Top bit on: the component is at least 2^63 (19 digits), so it has no leading zero and never
    // equals one of the short fixed arcs such as `ROOT.1`.
    format!("{ROOT}.{}", bits | (1 << 63))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn root_and_fixed_uids_are_valid() {
        assert!(is_valid(ROOT));
        assert!(is_valid(IMPLEMENTATION_CLASS_UID));
        assert!(IMPLEMENTATION_CLASS_UID.starts_with(ROOT));
        assert_eq!(ROOT.len(), 43);
    }

    #[test]
    fn derived_is_valid_and_deterministic() {
        let a = derived(&["phantom", "7", "series"]);
        let b = derived(&["phantom", "7", "series"]);
        assert_eq!(a, b);
        assert!(is_valid(&a), "{a}");
        assert!(a.len() <= 64);
        assert!(a.starts_with(&format!("{ROOT}.")));
        assert_ne!(a, derived(&["phantom", "7", "study"]));
        assert_ne!(derived(&["ab", "c"]), derived(&["a", "bc"]));
    }

    #[test]
    fn many_derived_uids_are_valid_and_distinct() {
        let mut seen = HashSet::new();
        for i in 0..5000 {
            let uid = derived(&["sop", &i.to_string()]);
            assert!(is_valid(&uid), "{uid}");
            assert!(uid.len() <= 64, "{uid}");
            assert!(seen.insert(uid));
        }
    }

    #[test]
    fn generated_uids_are_valid_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let uid = generate();
            assert!(is_valid(&uid), "{uid}");
            assert!(seen.insert(uid));
        }
    }

    #[test]
    fn validator_rejects_bad_syntax() {
        for bad in ["", "1..2", "1.02", "1.2.", ".1", "1.2a", &"1".repeat(65)] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(is_valid("1.0.2"));
    }
}
