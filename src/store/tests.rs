//! The store against an in-memory model: random puts, removals and reopenings (a restart) must
//! leave exactly the instances the model says, each once, with its file on disk.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn incoming(instance: u8, series: u8) -> IncomingInstance {
    let mut keys = QueryKeys::default();
    keys.set(
        dicom_dictionary_std::tags::SERIES_INSTANCE_UID,
        format!("1.2.3.{series}"),
    );
    keys.set(dicom_dictionary_std::tags::STUDY_INSTANCE_UID, "1.2.3");
    keys.set(dicom_dictionary_std::tags::MODALITY, "CT");
    IncomingInstance {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        sop_instance_uid: format!("1.2.3.{series}.{instance}"),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        keys,
        kind: InstanceKind::Image,
        dataset: vec![instance; 16],
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8),
    Remove(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..24).prop_map(Op::Put),
        2 => (0u8..24).prop_map(Op::Remove),
        1 => Just(Op::Reopen),
    ]
}

/// The series an instance number belongs to (fixed, as a real UID's series is).
fn series_of(instance: u8) -> u8 {
    instance % 3
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model_across_restarts(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 0).unwrap();
        let mut model: BTreeSet<u8> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Put(i) => {
                    let outcome = store.put_instance(incoming(i, series_of(i))).unwrap();
                    let expected = if model.insert(i) { PutOutcome::Stored } else { PutOutcome::Duplicate };
                    prop_assert_eq!(outcome, expected);
                }
                Op::Remove(i) => {
                    store.remove_instance(&format!("1.2.3.{}.{i}", series_of(i))).unwrap();
                    model.remove(&i);
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(dir.path(), 0).unwrap();
                }
            }
            let stored: BTreeSet<String> =
                store.all_instances().unwrap().into_iter().map(|r| r.sop_instance_uid).collect();
            let expected: BTreeSet<String> =
                model.iter().map(|i| format!("1.2.3.{}.{i}", series_of(*i))).collect();
            prop_assert_eq!(&stored, &expected);
            for series in 0..3u8 {
                let uid = format!("1.2.3.{series}");
                let members = store.series_instances(&uid).unwrap().len() as u64;
                let count = store.series(&uid).unwrap().map(|s| s.instance_count).unwrap_or(0);
                prop_assert_eq!(members, count);
                prop_assert_eq!(members as usize, model.iter().filter(|i| series_of(**i) == series).count());
            }
            for record in store.all_instances().unwrap() {
                prop_assert!(store.instance_path(&record).is_file());
            }
        }
    }
}

#[test]
fn unindexed_spool_file_is_recovered_at_open() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 0).unwrap();
    let mut obj = dicom_object::InMemDicomObject::new_empty();
    for (tag, vr, value) in [
        (tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2"),
        (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.0.1"),
        (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.0"),
        (tags::MODALITY, VR::CS, "CT"),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    }
    let mut dataset = Vec::new();
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    obj.write_dataset_with_ts(&mut dataset, &ts).unwrap();
    let one = IncomingInstance {
        dataset,
        ..incoming(1, 0)
    };
    // A crash after the file was written but before it was indexed:
    let path = store.series_dir("1.2.3.0").join("1.2.3.0.1.dcm");
    write_part10(&path, &one, None).unwrap();
    drop(store);
    let store = Store::open(dir.path(), 0).unwrap();
    let record = store.instance("1.2.3.0.1").unwrap().expect("recovered");
    assert_eq!(record.keys.series_uid(), "1.2.3.0");
    assert_eq!(store.series("1.2.3.0").unwrap().unwrap().instance_count, 1);
    // Resending it is recognised as a duplicate.
    assert_eq!(
        store.put_instance(incoming(1, 0)).unwrap(),
        PutOutcome::Duplicate
    );
}

#[test]
fn watermark_refuses_before_the_disk_fills() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), u64::MAX / (1024 * 1024 * 2)).unwrap();
    let err = store.put_instance(incoming(1, 0)).unwrap_err();
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
    assert!(store.all_instances().unwrap().is_empty());
}

#[test]
fn queue_claim_and_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 0).unwrap();
    store.put_instance(incoming(1, 0)).unwrap();
    let series = store.series("1.2.3.0").unwrap().unwrap();
    assert!(store.queue_job("1.2.3.0", series.generation).unwrap());
    assert!(
        !store.queue_job("1.2.3.0", series.generation).unwrap(),
        "queued twice"
    );
    let job = store.claim_job().unwrap().unwrap();
    assert_eq!(job.state, JobState::Running);
    assert!(store.claim_job().unwrap().is_none());
    drop(store);
    let store = Store::open(dir.path(), 0).unwrap();
    assert_eq!(store.requeue_interrupted().unwrap(), 1);
    assert_eq!(store.claim_job().unwrap().unwrap().attempts, 2);
}

#[test]
fn a_slot_made_ahead_receives_the_instance_and_leftovers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 0).unwrap();
    let slots = dir.path().join("spool").join(SLOTS);
    let count = |d: &Path| fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    let mut slot = Some(store.prepare_slot().unwrap());
    assert_eq!(count(&slots), 1);
    let written = store
        .write_instance_in(incoming(1, 0), Some(&mut slot))
        .unwrap();
    assert!(slot.is_none(), "the slot is used up");
    let Written::New(record) = written else {
        panic!("a new instance")
    };
    assert_eq!(store.index_instance(&record).unwrap(), PutOutcome::Stored);
    assert!(store.instance_path(&record).is_file());
    assert_eq!(count(&slots), 0, "renamed into the series folder");
    // A duplicate leaves the slot for the next instance.
    let mut slot = Some(store.prepare_slot().unwrap());
    assert!(matches!(
        store
            .write_instance_in(incoming(1, 0), Some(&mut slot))
            .unwrap(),
        Written::Duplicate
    ));
    assert!(slot.is_some());
    drop(slot);
    assert_eq!(count(&slots), 0, "an unused slot is removed when dropped");
    // One a crash left behind is removed at the next start.
    std::mem::forget(store.prepare_slot().unwrap());
    assert_eq!(count(&slots), 1);
    drop(store);
    let store = Store::open(dir.path(), 0).unwrap();
    assert_eq!(count(&slots), 0);
    assert_eq!(store.all_instances().unwrap().len(), 1);
}

#[test]
fn reopening_waits_for_an_index_lock_being_given_up() {
    // A restarted daemon may open the index while the old holder is still letting go of it.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 0).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(store);
    });
    let again = Store::open(dir.path(), 0);
    holder.join().unwrap();
    assert!(again.is_ok(), "{:?}", again.err());
}
