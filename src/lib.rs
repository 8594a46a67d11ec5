//! noduled: finds lung nodules in chest CTs and reports whether malignant ones are present.
//!
//! The data flows one way: DICOM files → [`dicom`] (instances, series) → [`volume::Volume`] →
//! [`pipeline`] (segmentation, grouping, classification, malignancy; inference through [`engine`]) →
//! findings. The CLI and the daemon both compose these modules; there is one pipeline.

pub mod config;
pub mod dicom;
pub mod engine;
pub mod eval;
pub mod logging;
pub mod phantom;
pub mod pipeline;
pub mod render;
pub mod server;
pub mod store;
pub mod uid;
pub mod volume;

pub use volume::{Geometry, PatientStudy, SeriesInfo, SourceInstance, Volume};
