//! Lung-RADS v2022 categories for a **baseline** low-dose screening CT, from a nodule's type and
//! mean diameter ([`super::measure`]). Source: ACR Lung-RADS v2022 (released November 2022), the
//! "baseline" rows of its category table; diameters are the mean of the long and short axial axes
//! to 0.1 mm, as v2022 asks.
//!
//! | type | category 2 | 3 | 4A | 4B |
//! |---|---|---|---|---|
//! | solid | < 6 mm | ≥ 6 to < 8 mm | ≥ 8 to < 15 mm | ≥ 15 mm |
//! | part-solid | < 6 mm (whole) | ≥ 6 mm whole, solid part < 6 mm | solid part ≥ 6 to < 8 mm | solid part ≥ 8 mm |
//! | ground glass | < 30 mm | ≥ 30 mm | — | — |
//! | calcified | category 1 | | | |
//!
//! The exam's category is its most suspicious nodule's ([`exam_category`]); no nodule is 1.
//!
//! Limits (what this table cannot do, and a radiologist must):
//! - **baseline only**: new or growing nodules at follow-up have lower thresholds (e.g. a new solid
//!   nodule ≥ 4 mm is 3), and stable ones downgrade; noduled has no prior exam;
//! - **calcified = 1** assumes the calcification is one of v2022's benign patterns (complete,
//!   central, popcorn, concentric); an eccentric speck of calcium is not benign, and noduled does
//!   not tell the patterns apart. Fat-containing nodules are not detected (they stay solid);
//! - **4X** (category 3 or 4 with features that raise suspicion: spiculation, lymphadenopathy,
//!   growth) is never assigned, as are perifissural and juxtapleural downgrades to 2, airway
//!   nodules (4A), atypical cysts, and the S and C modifiers;
//! - volume thresholds (v2022 gives both) are not used: the axial mean diameter decides;
//! - the type comes from HU thresholds (see [`super::measure`]), not from a reader's impression.

use super::measure::NoduleType;
use serde::{Deserialize, Serialize};

/// A Lung-RADS v2022 category (the subset noduled can assign, plus 0 and 4X for completeness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LungRads {
    /// Incomplete: lungs cannot be evaluated.
    #[serde(rename = "0")]
    Incomplete,
    /// Negative: no nodule, or benign calcification.
    #[serde(rename = "1")]
    Negative,
    /// Benign appearance or behaviour.
    #[serde(rename = "2")]
    Benign,
    /// Probably benign.
    #[serde(rename = "3")]
    ProbablyBenign,
    /// Suspicious.
    #[serde(rename = "4A")]
    Suspicious4A,
    /// Very suspicious.
    #[serde(rename = "4B")]
    VerySuspicious4B,
    /// Category 3 or 4 with additional features that raise suspicion.
    #[serde(rename = "4X")]
    VerySuspicious4X,
}

impl LungRads {
    /// The category as the ACR writes it: `0`, `1`, `2`, `3`, `4A`, `4B`, `4X`.
    pub fn as_str(self) -> &'static str {
        match self {
            LungRads::Incomplete => "0",
            LungRads::Negative => "1",
            LungRads::Benign => "2",
            LungRads::ProbablyBenign => "3",
            LungRads::Suspicious4A => "4A",
            LungRads::VerySuspicious4B => "4B",
            LungRads::VerySuspicious4X => "4X",
        }
    }

    /// The ACR's management for a baseline screen in this category (short form).
    pub fn management(self) -> &'static str {
        match self {
            LungRads::Incomplete => "additional imaging or comparison needed",
            LungRads::Negative | LungRads::Benign => "12-month screening LDCT",
            LungRads::ProbablyBenign => "6-month LDCT",
            LungRads::Suspicious4A => {
                "3-month LDCT; PET/CT may be considered if solid part >= 8 mm"
            }
            LungRads::VerySuspicious4B | LungRads::VerySuspicious4X => {
                "diagnostic chest CT with or without contrast; PET/CT; tissue sampling"
            }
        }
    }
}

impl std::fmt::Display for LungRads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The baseline category of one nodule from its type, mean diameter and (part-solid) solid
/// component's mean diameter, in mm (the table in the module docs).
pub fn baseline(nodule_type: NoduleType, mean_mm: f64, solid_mean_mm: f64) -> LungRads {
    match nodule_type {
        NoduleType::Calcified => LungRads::Negative,
        NoduleType::Solid => {
            if mean_mm < 6.0 {
                LungRads::Benign
            } else if mean_mm < 8.0 {
                LungRads::ProbablyBenign
            } else if mean_mm < 15.0 {
                LungRads::Suspicious4A
            } else {
                LungRads::VerySuspicious4B
            }
        }
        NoduleType::PartSolid => {
            if mean_mm < 6.0 {
                LungRads::Benign
            } else if solid_mean_mm < 6.0 {
                LungRads::ProbablyBenign
            } else if solid_mean_mm < 8.0 {
                LungRads::Suspicious4A
            } else {
                LungRads::VerySuspicious4B
            }
        }
        NoduleType::GroundGlass => {
            if mean_mm < 30.0 {
                LungRads::Benign
            } else {
                LungRads::ProbablyBenign
            }
        }
    }
}

/// The exam's category: the highest of its nodules', 1 when there are none.
pub fn exam_category(categories: impl IntoIterator<Item = LungRads>) -> LungRads {
    categories.into_iter().max().unwrap_or(LungRads::Negative)
}

#[cfg(test)]
mod tests {
    use super::*;
    use NoduleType::*;

    #[test]
    fn solid_boundaries() {
        for (d, cat) in [
            (3.0, "2"),
            (5.9, "2"),
            (6.0, "3"),
            (7.9, "3"),
            (8.0, "4A"),
            (14.9, "4A"),
            (15.0, "4B"),
            (40.0, "4B"),
        ] {
            assert_eq!(baseline(Solid, d, d).as_str(), cat, "solid {d} mm");
        }
    }

    #[test]
    fn part_solid_boundaries() {
        assert_eq!(baseline(PartSolid, 5.9, 5.0).as_str(), "2");
        assert_eq!(baseline(PartSolid, 6.0, 5.9).as_str(), "3");
        assert_eq!(baseline(PartSolid, 12.0, 6.0).as_str(), "4A");
        assert_eq!(baseline(PartSolid, 12.0, 7.9).as_str(), "4A");
        assert_eq!(baseline(PartSolid, 12.0, 8.0).as_str(), "4B");
    }

    #[test]
    fn ground_glass_and_calcified() {
        assert_eq!(baseline(GroundGlass, 29.9, 0.0).as_str(), "2");
        assert_eq!(baseline(GroundGlass, 30.0, 0.0).as_str(), "3");
        assert_eq!(baseline(Calcified, 25.0, 25.0).as_str(), "1");
    }

    #[test]
    fn exam_takes_the_worst() {
        assert_eq!(exam_category([]).as_str(), "1");
        let cats = [
            LungRads::Benign,
            LungRads::Suspicious4A,
            LungRads::ProbablyBenign,
        ];
        assert_eq!(exam_category(cats), LungRads::Suspicious4A);
        assert_eq!(
            serde_json::to_string(&LungRads::VerySuspicious4B).expect("serialises"),
            "\"4B\""
        );
    }
}
