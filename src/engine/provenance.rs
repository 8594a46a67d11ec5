//! Model provenance: what a model file says about how it was made, read from its ONNX
//! `metadata_props` into a typed [`Provenance`].
//!
//! noduled's models (and the converted book weights) carry these keys:
//!
//! | key | value |
//! |---|---|
//! | `noduled.role` | `segmentation`, `nodule` or `malignancy` |
//! | `noduled.train_series` | JSON array of the SeriesInstanceUIDs trained on, or `unknown` |
//! | `noduled.val_series` | JSON array of the SeriesInstanceUIDs validated on, or `unknown` |
//! | `noduled.metrics` | JSON (AUC, ...) |
//! | `noduled.input` | JSON (shape, HU clamp, ...) |
//! | `noduled.source` | JSON (data set, code revision, ...) |
//! | `noduled.split_note` | free text on how the split was made |
//!
//! Why typed: `noduled eval` refuses to evaluate a model on series it was trained on (the leak the
//! book's classification split had), which needs the series lists as sets, and `noduled models`
//! shows them. A list that is present but malformed is an error (a guard that silently reads a
//! broken list as "no series" would let a leak through); a missing key or the word `unknown` is
//! [`SeriesList::Unknown`], which callers must treat as "cannot tell", never as "not trained on".

use super::{ModelInfo, ModelRole};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Metadata key of the role.
pub const KEY_ROLE: &str = "noduled.role";
/// Metadata key of the training series.
pub const KEY_TRAIN_SERIES: &str = "noduled.train_series";
/// Metadata key of the validation series.
pub const KEY_VAL_SERIES: &str = "noduled.val_series";
/// Metadata key of the metrics.
pub const KEY_METRICS: &str = "noduled.metrics";
/// Metadata key of the input description.
pub const KEY_INPUT: &str = "noduled.input";
/// Metadata key of the source description.
pub const KEY_SOURCE: &str = "noduled.source";
/// Metadata key of the free-text note on the split.
pub const KEY_SPLIT_NOTE: &str = "noduled.split_note";
/// Metadata key of the weights a model started from (transfer learning): their file, digest and
/// data set. Their training series are not in `noduled.train_series`.
pub const KEY_PRETRAINED: &str = "noduled.pretrained";

/// A `noduled.*` property that is present but cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProvenanceError {
    #[error("model {model}: metadata {key} = {value:?} is not a known role (segmentation, nodule, malignancy)")]
    Role {
        model: String,
        key: &'static str,
        value: String,
    },
    #[error("model {model}: metadata {key} is neither `unknown` nor a JSON array of SeriesInstanceUIDs: {reason}")]
    SeriesList {
        model: String,
        key: &'static str,
        reason: String,
    },
}

/// A list of series from the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeriesList {
    /// The key is absent or says `unknown`: membership cannot be decided.
    #[default]
    Unknown,
    /// The SeriesInstanceUIDs, as listed.
    Listed(BTreeSet<String>),
}

impl SeriesList {
    /// `Some(true)` if `series_uid` is listed, `Some(false)` if the list is known and lacks it,
    /// `None` if the list is unknown.
    pub fn contains(&self, series_uid: &str) -> Option<bool> {
        match self {
            SeriesList::Unknown => None,
            SeriesList::Listed(uids) => Some(uids.contains(series_uid)),
        }
    }

    /// Whether the list is known.
    pub fn is_known(&self) -> bool {
        matches!(self, SeriesList::Listed(_))
    }

    /// Parses a metadata value (`None`: the key is absent).
    fn parse(
        model: &str,
        key: &'static str,
        value: Option<&str>,
    ) -> Result<SeriesList, ProvenanceError> {
        let Some(value) = value.map(str::trim) else {
            return Ok(SeriesList::Unknown);
        };
        if value.is_empty() || value.eq_ignore_ascii_case("unknown") {
            return Ok(SeriesList::Unknown);
        }
        let uids: Vec<String> =
            serde_json::from_str(value).map_err(|e| ProvenanceError::SeriesList {
                model: model.to_string(),
                key,
                reason: e.to_string(),
            })?;
        if let Some(bad) = uids.iter().find(|u| u.trim().is_empty()) {
            return Err(ProvenanceError::SeriesList {
                model: model.to_string(),
                key,
                reason: format!("empty UID {bad:?} in the list"),
            });
        }
        Ok(SeriesList::Listed(
            uids.into_iter().map(|u| u.trim().to_string()).collect(),
        ))
    }
}

/// Serialised as the JSON array of UIDs, or the string `"unknown"`.
impl Serialize for SeriesList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SeriesList::Unknown => serializer.serialize_str("unknown"),
            SeriesList::Listed(uids) => {
                let mut seq = serializer.serialize_seq(Some(uids.len()))?;
                for uid in uids {
                    seq.serialize_element(uid)?;
                }
                seq.end()
            }
        }
    }
}

/// What a model file declares about itself.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Provenance {
    /// `noduled.role`, if declared.
    pub role: Option<ModelRole>,
    pub train_series: SeriesList,
    pub val_series: SeriesList,
    /// `noduled.metrics` as JSON (a value that is not JSON is kept as a JSON string).
    pub metrics: Option<serde_json::Value>,
    /// `noduled.input` as JSON (likewise).
    pub input: Option<serde_json::Value>,
    /// `noduled.source` as JSON (likewise).
    pub source: Option<serde_json::Value>,
    /// `noduled.split_note`.
    pub split_note: Option<String>,
    /// `noduled.pretrained`: the weights this model started from, if any (JSON, or text).
    pub pretrained: Option<serde_json::Value>,
}

/// A free-form property: JSON when it parses, else the text itself; absent or blank is `None`.
fn json_or_text(value: Option<&String>) -> Option<serde_json::Value> {
    let value = value?.trim();
    if value.is_empty() {
        return None;
    }
    Some(
        serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string())),
    )
}

impl Provenance {
    /// Reads the `noduled.*` properties of `metadata` (`model` names the file in errors).
    pub fn from_metadata(
        model: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Provenance, ProvenanceError> {
        let role = match metadata.get(KEY_ROLE).map(|r| r.trim()) {
            None | Some("") => None,
            Some(value) => Some(
                [
                    ModelRole::Segmentation,
                    ModelRole::Nodule,
                    ModelRole::Malignancy,
                ]
                .into_iter()
                .find(|r| r.as_str() == value)
                .ok_or_else(|| ProvenanceError::Role {
                    model: model.to_string(),
                    key: KEY_ROLE,
                    value: value.to_string(),
                })?,
            ),
        };
        let series = |key| SeriesList::parse(model, key, metadata.get(key).map(String::as_str));
        Ok(Provenance {
            role,
            train_series: series(KEY_TRAIN_SERIES)?,
            val_series: series(KEY_VAL_SERIES)?,
            metrics: json_or_text(metadata.get(KEY_METRICS)),
            input: json_or_text(metadata.get(KEY_INPUT)),
            source: json_or_text(metadata.get(KEY_SOURCE)),
            split_note: metadata
                .get(KEY_SPLIT_NOTE)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            pretrained: json_or_text(metadata.get(KEY_PRETRAINED)),
        })
    }

    /// Whether every series that shaped the weights is listed: the model's own training series
    /// are known, and it did not start from weights trained on series nobody listed.
    pub fn training_fully_listed(&self) -> bool {
        let inherited_listed = match &self.pretrained {
            None => true,
            Some(serde_json::Value::Object(map)) => map
                .get("train_series")
                .and_then(serde_json::Value::as_array)
                .is_some(),
            Some(_) => false,
        };
        self.train_series.is_known() && inherited_listed
    }
}

impl ModelInfo {
    /// The model's [`Provenance`], read from its metadata.
    pub fn provenance(&self) -> Result<Provenance, ProvenanceError> {
        Provenance::from_metadata(&self.name, &self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_every_key() {
        let m = meta(&[
            (KEY_ROLE, "malignancy"),
            (KEY_TRAIN_SERIES, r#"["1.2.3", "1.2.4"]"#),
            (KEY_VAL_SERIES, r#"["1.2.5"]"#),
            (KEY_METRICS, r#"{"auc": 0.91}"#),
            (KEY_INPUT, r#"{"shape": ["batch", 1, 32, 48, 48]}"#),
            (KEY_SOURCE, "phantoms seed 7"),
            (KEY_SPLIT_NOTE, " by CT "),
        ]);
        let p = Provenance::from_metadata("m.onnx", &m).unwrap();
        assert_eq!(p.role, Some(ModelRole::Malignancy));
        assert_eq!(p.train_series.contains("1.2.3"), Some(true));
        assert_eq!(p.train_series.contains("1.2.5"), Some(false));
        assert_eq!(p.val_series.contains("1.2.5"), Some(true));
        assert_eq!(p.metrics.as_ref().unwrap()["auc"], 0.91);
        assert_eq!(p.input.as_ref().unwrap()["shape"][1], 1);
        // Not JSON: kept as text.
        assert_eq!(p.source, Some(serde_json::json!("phantoms seed 7")));
        assert_eq!(p.split_note.as_deref(), Some("by CT"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["role"], "malignancy");
        assert_eq!(json["train_series"], serde_json::json!(["1.2.3", "1.2.4"]));
    }

    #[test]
    fn unknown_and_absent_lists_decide_nothing() {
        let p =
            Provenance::from_metadata("m.onnx", &meta(&[(KEY_TRAIN_SERIES, "unknown")])).unwrap();
        assert_eq!(p.train_series, SeriesList::Unknown);
        assert_eq!(p.train_series.contains("1.2.3"), None);
        assert_eq!(p.val_series, SeriesList::Unknown);
        assert_eq!(p.role, None);
        assert_eq!(p.metrics, None);
        assert_eq!(serde_json::to_value(&p).unwrap()["val_series"], "unknown");
    }

    #[test]
    fn malformed_values_are_errors() {
        let err = Provenance::from_metadata("m.onnx", &meta(&[(KEY_TRAIN_SERIES, "1.2.3,1.2.4")]))
            .unwrap_err();
        assert!(err.to_string().contains(KEY_TRAIN_SERIES), "{err}");
        assert!(err.to_string().contains("m.onnx"), "{err}");
        let err = Provenance::from_metadata("m.onnx", &meta(&[(KEY_VAL_SERIES, r#"[1, 2]"#)]))
            .unwrap_err();
        assert!(matches!(err, ProvenanceError::SeriesList { .. }), "{err}");
        let err = Provenance::from_metadata("m.onnx", &meta(&[(KEY_VAL_SERIES, r#"["", "1"]"#)]))
            .unwrap_err();
        assert!(err.to_string().contains("empty UID"), "{err}");
        let err =
            Provenance::from_metadata("m.onnx", &meta(&[(KEY_ROLE, "detector")])).unwrap_err();
        assert!(err.to_string().contains("detector"), "{err}");
    }
}
