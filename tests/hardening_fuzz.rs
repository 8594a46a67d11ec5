//! Property-based fuzzing (issue 8) of what the daemon runs on bytes from the network: instance
//! parsing + validation (`noduled::server::store_scp::validate`) and series assembly
//! (`noduled::dicom::series::assemble`), seeded with real phantom slices and mutated at random
//! (byte flips, truncation, absurd length fields, broken geometry). Properties: never a panic; a
//! refusal or an answer consistent with the input; declared lengths past the data are refused
//! before anything is allocated for them. Runs in CI in a few seconds (`PROPTEST_CASES` raises
//! the case count for a longer run). The cargo-fuzz targets in `fuzz/` drive the same functions.

use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use noduled::dicom::instance::{read_object, CtInstance, ReadOutcome};
use noduled::dicom::series::{assemble, SeriesRules};
use noduled::server::store_scp::{check_declared_lengths, validate};
use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

struct Seeds {
    /// (explicit VR LE bytes, implicit VR LE bytes, SOP instance UID) per slice.
    datasets: Vec<(Vec<u8>, Vec<u8>, String)>,
    instances: Vec<CtInstance>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let spec = noduled::phantom::PhantomSpec {
            seed: 5,
            slices: 8,
            rows: 32,
            columns: 32,
            nodules: 1,
            ..noduled::phantom::PhantomSpec::default()
        };
        let summary = noduled::phantom::write_dataset(dir.path(), 5, 1, &spec).unwrap();
        let mut datasets = Vec::new();
        let mut instances = Vec::new();
        for file in &summary.series[0].files {
            let obj = dicom_object::open_file(file).unwrap();
            let mut explicit = Vec::new();
            obj.write_dataset_with_ts(&mut explicit, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
            let mut implicit = Vec::new();
            obj.write_dataset_with_ts(&mut implicit, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
            let uid = obj
                .meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0')
                .to_string();
            datasets.push((explicit, implicit, uid));
            match read_object(&obj, Path::new("(seed)")) {
                Ok(ReadOutcome::Ct(instance)) => instances.push(*instance),
                _ => panic!("phantom slice is not a CT"),
            }
        }
        Seeds {
            datasets,
            instances,
        }
    })
}

/// One mutation of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, value: u8 },
    Truncate { at: usize },
    Length { at: usize, value: u32 },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Flip { at, value }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        3 => (any::<usize>(), prop_oneof![Just(0xFFFF_FFFFu32), Just(0xFFFF_FFF0), Just(0x8000_0000), any::<u32>()])
            .prop_map(|(at, value)| Mutation::Length { at, value }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn apply(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if data.is_empty() {
            break;
        }
        let n = data.len();
        match m {
            Mutation::Flip { at, value } => data[at % n] = *value,
            Mutation::Truncate { at } => data.truncate(at % n),
            Mutation::Length { at, value } => {
                let at = at % n;
                for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                    if at + i < n {
                        data[at + i] = b;
                    }
                }
            }
            Mutation::Insert { at, bytes } => {
                let at = at % n;
                data.splice(at..at, bytes.iter().copied());
            }
        }
    }
    data
}

#[test]
fn unmutated_seeds_validate_in_both_syntaxes() {
    for (explicit, implicit, uid) in &seeds().datasets {
        assert!(validate(explicit.clone(), "1.2.840.10008.1.2.1", CT, uid).is_ok());
        assert!(validate(implicit.clone(), "1.2.840.10008.1.2", CT, uid).is_ok());
    }
    let volume = assemble(seeds().instances.clone(), &SeriesRules::default())
        .expect("seed series assembles");
    assert_eq!(volume.hu.dim(), (8, 32, 32));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Mutated instances: `validate` answers (accept or refuse) without panicking, and a data set
    /// with a declared length past its end is always refused.
    #[test]
    fn mutated_instances_are_answered_never_panic(
        slice in 0usize..8,
        implicit in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let (e, i, uid) = &seeds().datasets[slice];
        let (bytes, ts) = if implicit { (i, "1.2.840.10008.1.2") } else { (e, "1.2.840.10008.1.2.1") };
        let data = apply(bytes.clone(), &mutations);
        let lengths_ok = check_declared_lengths(&data, !implicit).is_ok();
        let result = validate(data, ts, CT, uid);
        if !lengths_ok {
            prop_assert!(result.is_err(), "a data set with an impossible length was accepted");
        }
        if let Err(refused) = &result {
            prop_assert!(matches!(refused.status, 0xA700 | 0xA900 | 0xC000), "status {:#06x}", refused.status);
            prop_assert!(!refused.reason.contains('\n'), "one-line reason: {}", refused.reason);
        }
    }

    /// Series assembly of perturbed slices: refusal or a volume with one plane per slice.
    #[test]
    fn perturbed_series_assemble_or_are_refused(
        keep in proptest::collection::vec(any::<bool>(), 8),
        duplicate in proptest::option::of(0usize..8),
        perturb in proptest::collection::vec((0usize..8, 0u8..8, prop_oneof![
            Just(f64::NAN), Just(f64::INFINITY), Just(-1e300), Just(0.0), Just(1e-12), -500.0f64..500.0
        ]), 0..4),
    ) {
        let mut instances: Vec<CtInstance> = seeds()
            .instances
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(i, _)| i.clone())
            .collect();
        if let Some(d) = duplicate {
            if let Some(copy) = instances.get(d % instances.len().max(1)).cloned() {
                instances.push(copy);
            }
        }
        for (which, field, value) in &perturb {
            let Some(n) = Some(instances.len()).filter(|n| *n > 0) else { break };
            let h = &mut instances[which % n].header;
            match field {
                0 => h.position = h.position.map(|mut p| { p[2] = *value; p }),
                1 => h.position = None,
                2 => h.orientation = h.orientation.map(|mut o| { o[0] = *value; o[4] = *value; o }),
                3 => h.pixel_spacing = h.pixel_spacing.map(|_| [*value, *value]),
                4 => h.rows = (value.abs().min(4096.0) as usize).max(1),
                5 => h.rescale_slope = *value,
                6 => h.slice_thickness = Some(*value),
                _ => h.orientation = None,
            }
        }
        let count = instances.len();
        match assemble(instances, &SeriesRules::default()) {
            Ok(volume) => {
                let (slices, rows, cols) = volume.hu.dim();
                prop_assert_eq!(slices, count);
                prop_assert!(rows > 0 && cols > 0);
            }
            Err(refusal) => prop_assert!(!refusal.code().is_empty()),
        }
    }
}
