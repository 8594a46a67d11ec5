//! The leak guard: an evaluation must not run on series a model was trained on.
//!
//! The book split its segmentation data by CT but its classification data by nodule, so nodules of
//! validation CTs were trained on and its validation figures flattered the models. noduled refuses
//! such an evaluation. Two sources say a series was trained on: a model's `noduled.train_series`
//! (see [`crate::engine::provenance`]) and a split manifest (`series_uid,split`) that marks it
//! `train`. A model whose training list is unknown (the book's published weights), or that started
//! from such weights (`noduled.pretrained`), cannot be fully checked: that is reported, not
//! refused, and every output says so.

use crate::engine::provenance::Provenance;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Where a series' membership comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum LeakSource {
    /// The model's `noduled.train_series` lists the series.
    ModelMetadata { model: String },
    /// The split manifest marks the series `train`.
    Split { file: String },
}

/// One evaluated series that was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    pub series_uid: String,
    #[serde(flatten)]
    pub source: LeakSource,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            LeakSource::ModelMetadata { model } => write!(
                f,
                "series {} is in the training series (noduled.train_series) of model {model}",
                self.series_uid
            ),
            LeakSource::Split { file } => write!(
                f,
                "series {} is marked train in the split {file}",
                self.series_uid
            ),
        }
    }
}

/// What the guard found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeakCheck {
    /// Evaluated series that were trained on.
    pub leaks: Vec<Leak>,
    /// Models whose training series (or those of the weights they started from) are unknown, so
    /// the check could not cover them.
    pub unverified_models: Vec<String>,
}

impl LeakCheck {
    /// Whether anything leaked.
    pub fn is_leaky(&self) -> bool {
        !self.leaks.is_empty()
    }

    /// The refusal message: it says "leak", and names each model or split and series.
    pub fn message(&self) -> String {
        let mut text = format!(
            "refusing to evaluate: data leak ({} series trained on): ",
            self.leaks.len()
        );
        let parts: Vec<String> = self.leaks.iter().map(Leak::to_string).collect();
        text.push_str(&parts.join("; "));
        text.push_str(
            ". Evaluate on series no model was trained on, or pass --allow-leak to run anyway \
             (every output is then stamped LEAKY)",
        );
        text
    }
}

/// Checks `series` (the evaluated SeriesInstanceUIDs) against the models' provenance (model name,
/// provenance) and a split manifest (series UID → split name, with the file's name for messages).
pub fn check(
    series: &[String],
    models: &[(String, Provenance)],
    split: Option<(&str, &BTreeMap<String, String>)>,
) -> LeakCheck {
    let mut result = LeakCheck::default();
    for (name, provenance) in models {
        if !provenance.training_fully_listed() {
            result.unverified_models.push(name.clone());
        }
    }
    for uid in series {
        for (name, provenance) in models {
            if provenance.train_series.contains(uid) == Some(true) {
                result.leaks.push(Leak {
                    series_uid: uid.clone(),
                    source: LeakSource::ModelMetadata {
                        model: name.clone(),
                    },
                });
            }
        }
        if let Some((file, split)) = split {
            if split.get(uid).is_some_and(|s| s == "train") {
                result.leaks.push(Leak {
                    series_uid: uid.clone(),
                    source: LeakSource::Split {
                        file: file.to_string(),
                    },
                });
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provenance::SeriesList;

    fn trained_on(uids: &[&str]) -> Provenance {
        Provenance {
            train_series: SeriesList::Listed(uids.iter().map(|u| u.to_string()).collect()),
            ..Provenance::default()
        }
    }

    #[test]
    fn a_series_in_a_models_training_list_is_a_leak() {
        let models = vec![
            ("seg.onnx".to_string(), trained_on(&["1.1", "1.2"])),
            ("nodule.onnx".to_string(), trained_on(&["1.3"])),
        ];
        let series = vec!["1.2".to_string(), "1.9".to_string()];
        let c = check(&series, &models, None);
        assert!(c.is_leaky());
        assert_eq!(c.leaks.len(), 1);
        let message = c.message();
        assert!(message.contains("leak"), "{message}");
        assert!(
            message.contains("seg.onnx") && message.contains("1.2"),
            "{message}"
        );
        assert!(!message.contains("nodule.onnx"), "{message}");
        assert!(c.unverified_models.is_empty());
        let clean = check(&["1.9".to_string()], &models, None);
        assert!(!clean.is_leaky());
    }

    #[test]
    fn a_series_marked_train_in_the_split_is_a_leak() {
        let split: BTreeMap<String, String> = [("1.1", "train"), ("1.2", "val"), ("1.3", "test")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let series = vec!["1.1".to_string(), "1.2".to_string()];
        let c = check(&series, &[], Some(("split.csv", &split)));
        assert_eq!(
            c.leaks,
            vec![Leak {
                series_uid: "1.1".into(),
                source: LeakSource::Split {
                    file: "split.csv".into()
                }
            }]
        );
        assert!(c.message().contains("split.csv"));
        assert!(!check(
            &["1.2".to_string(), "1.3".to_string()],
            &[],
            Some(("s", &split))
        )
        .is_leaky());
    }

    #[test]
    fn unknown_training_lists_are_reported_not_refused() {
        let models = vec![("book.onnx".to_string(), Provenance::default())];
        let c = check(&["1.1".to_string()], &models, None);
        assert!(!c.is_leaky());
        assert_eq!(c.unverified_models, vec!["book.onnx".to_string()]);
    }

    #[test]
    fn a_model_started_from_unlisted_weights_is_unverified_and_still_checked() {
        let mut tuned = trained_on(&["1.1"]);
        tuned.pretrained =
            Some(serde_json::json!({"from": "book.state", "train_series": "unknown"}));
        let models = vec![("tuned.onnx".to_string(), tuned)];
        let c = check(&["1.1".to_string(), "1.2".to_string()], &models, None);
        assert_eq!(c.unverified_models, vec!["tuned.onnx".to_string()]);
        assert!(c.is_leaky(), "its own training series are still refused");
        let mut listed = trained_on(&["1.1"]);
        listed.pretrained = Some(serde_json::json!({"from": "x", "train_series": ["9.9"]}));
        let c = check(
            &["1.2".to_string()],
            &[("listed.onnx".to_string(), listed)],
            None,
        );
        assert!(c.unverified_models.is_empty());
    }
}
