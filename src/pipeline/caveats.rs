//! Caveats: named reasons why an analysis falls outside the range its models were validated on,
//! so that no output can read as a plain, trusted "no" where the models were never tested.
//!
//! The book's models were trained and validated on LUNA16 (Setio et al., "Validation, comparison,
//! and combination of algorithms for automatic detection of pulmonary nodules in computed
//! tomography images: the LUNA16 challenge", Medical Image Analysis 42, 2017): LIDC-IDRI scans with
//! slices of 2.5 mm or thinner, nodules of 3–30 mm. Each caveat below names one way a series or a
//! model leaves that range:
//!
//! | name | when | source of the rule |
//! |---|---|---|
//! | `thick-slices` | SliceThickness or the slice step > 2.5 mm | LUNA16 excluded scans with slices thicker than 2.5 mm (Setio et al. 2017) |
//! | `few-slices` | fewer than 32 slices | the classifier's crop is 32 slices deep ([`super::classify::CROP`]); shorter volumes are padded with -1000 HU (air) |
//! | `pixel-spacing` | a pixel spacing outside 0.5–1.0 mm | LIDC-IDRI in-plane spacing is 0.46–0.98 mm (Armato et al., Med. Phys. 38, 2011); the 0.5–1.0 mm band |
//! | `no-lung-field` | aerated lung (−950 to −500 HU) under 2 % of the voxels | a chest CT's lungs fill far more; the models only know lung |
//! | `contrast` | ContrastBolusAgent (0018,0010) present and not "none" | contrast enhances vessels and lesions; the caveat makes the reader check |
//! | `low-dose` | CTDIvol (0018,9345) ≤ 3 mGy, or the series/study description says low dose | ACR–STR practice parameter for lung-cancer-screening LDCT: CTDIvol ≤ 3.0 mGy for a standard-size patient |
//! | `synthetic-models` | a model's ONNX metadata says it was trained on synthetic data | see [`synthetic_model`]: such models are for the demo and tests, not for real CTs |
//!
//! A model declares synthetic training data by the metadata property `noduled.synthetic` set to
//! `true`/`yes`/`1`, or by `noduled.source` (or `noduled.train_series`) mentioning `synthetic` or
//! `phantom` (case-insensitive). Model-building code should set `noduled.synthetic = "true"`.
//!
//! Each caveat has a [`CaveatPolicy`] in the configuration's `[caveats]` table: `caveat` (the
//! default: analyse and say so in every output — JSON `caveats`, one `caveat` line on stdout, a TEXT
//! in the SR's Qualitative Evaluations, a log warning, [`super::Analysis::caveats`] for the daemon)
//! or `refuse` (the analysis stops with [`super::PipelineError::Refused`] naming the caveat).

use crate::engine::ModelInfo;
use crate::volume::Volume;
use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

/// Thicker slices or larger steps (mm) than LUNA16's are outside the validated range.
pub const MAX_SLICE_MM: f64 = 2.5;
/// Fewer slices than the classifier's 32-slice crop.
pub const MIN_SLICES: usize = 32;
/// Validated in-plane pixel spacing (mm), inclusive.
pub const PIXEL_SPACING_MM: (f64, f64) = (0.5, 1.0);
/// HU band counted as aerated lung for the `no-lung-field` caveat.
pub const LUNG_HU: (f32, f32) = (-950.0, -500.0);
/// Below this fraction of aerated-lung voxels the series has (almost) no lung field.
pub const MIN_LUNG_FRACTION: f64 = 0.02;
/// CTDIvol (mGy) at or below which a series is low-dose (ACR–STR LDCT screening limit).
pub const LOW_DOSE_CTDI_MGY: f64 = 3.0;

/// The kinds of caveat, by name (kebab-case in JSON, configuration and reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaveatKind {
    ThickSlices,
    FewSlices,
    PixelSpacing,
    NoLungField,
    Contrast,
    LowDose,
    SyntheticModels,
}

impl CaveatKind {
    /// Every kind, in report order.
    pub const ALL: [CaveatKind; 7] = [
        CaveatKind::ThickSlices,
        CaveatKind::FewSlices,
        CaveatKind::PixelSpacing,
        CaveatKind::NoLungField,
        CaveatKind::Contrast,
        CaveatKind::LowDose,
        CaveatKind::SyntheticModels,
    ];

    /// The caveat's name, e.g. `thick-slices`.
    pub fn name(self) -> &'static str {
        match self {
            CaveatKind::ThickSlices => "thick-slices",
            CaveatKind::FewSlices => "few-slices",
            CaveatKind::PixelSpacing => "pixel-spacing",
            CaveatKind::NoLungField => "no-lung-field",
            CaveatKind::Contrast => "contrast",
            CaveatKind::LowDose => "low-dose",
            CaveatKind::SyntheticModels => "synthetic-models",
        }
    }
}

impl std::fmt::Display for CaveatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One caveat: its name and what exactly was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caveat {
    pub name: CaveatKind,
    /// One line, e.g. `slice thickness 8 mm > 2.5 mm (LUNA16's limit)`.
    pub detail: String,
}

impl Caveat {
    pub fn new(name: CaveatKind, detail: impl Into<String>) -> Caveat {
        Caveat {
            name,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Caveat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.detail)
    }
}

/// What to do when a caveat applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaveatPolicy {
    /// Analyse, and carry the caveat in every output.
    #[default]
    Caveat,
    /// Refuse the series with the caveat as the reason.
    Refuse,
}

/// `[caveats]`: one policy per caveat (all `caveat` by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct CaveatPolicies {
    pub thick_slices: CaveatPolicy,
    pub few_slices: CaveatPolicy,
    pub pixel_spacing: CaveatPolicy,
    pub no_lung_field: CaveatPolicy,
    pub contrast: CaveatPolicy,
    pub low_dose: CaveatPolicy,
    pub synthetic_models: CaveatPolicy,
}

impl CaveatPolicies {
    /// The policy of one kind.
    pub fn policy(&self, kind: CaveatKind) -> CaveatPolicy {
        match kind {
            CaveatKind::ThickSlices => self.thick_slices,
            CaveatKind::FewSlices => self.few_slices,
            CaveatKind::PixelSpacing => self.pixel_spacing,
            CaveatKind::NoLungField => self.no_lung_field,
            CaveatKind::Contrast => self.contrast,
            CaveatKind::LowDose => self.low_dose,
            CaveatKind::SyntheticModels => self.synthetic_models,
        }
    }

    /// The first caveat of `caveats` whose policy is [`CaveatPolicy::Refuse`].
    pub fn refused<'a>(&self, caveats: &'a [Caveat]) -> Option<&'a Caveat> {
        caveats
            .iter()
            .find(|c| self.policy(c.name) == CaveatPolicy::Refuse)
    }
}

/// `{:.3}` without trailing zeros: 8 → "8", 0.703125 → "0.703".
fn mm(value: f64) -> String {
    let s = format!("{value:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The caveats the series alone gives: slice thickness and step, slice count, pixel spacing,
/// contrast and dose (the lung field needs the voxels: [`of_lung_field`]).
pub fn of_series(volume: &Volume) -> Vec<Caveat> {
    let mut out = Vec::new();
    let series = &volume.series;
    let [sx, sy, step] = volume.geometry.spacing_xyz;
    let thickness = series.slice_thickness_mm.filter(|t| t.is_finite());
    let mut thick = Vec::new();
    if let Some(t) = thickness.filter(|&t| t > MAX_SLICE_MM) {
        thick.push(format!("slice thickness {} mm", mm(t)));
    }
    if volume.shape()[0] > 1 && step.abs() > MAX_SLICE_MM {
        thick.push(format!("slice step {} mm", mm(step.abs())));
    }
    if !thick.is_empty() {
        out.push(Caveat::new(
            CaveatKind::ThickSlices,
            format!(
                "{} > {MAX_SLICE_MM} mm, thicker than LUNA16's slices: small nodules may be missed",
                thick.join(", ")
            ),
        ));
    }
    let slices = volume.shape()[0];
    if slices < MIN_SLICES {
        out.push(Caveat::new(
            CaveatKind::FewSlices,
            format!(
                "{slices} slices < {MIN_SLICES} (the classifier's crop depth): crops are padded with -1000 HU"
            ),
        ));
    }
    let (lo, hi) = PIXEL_SPACING_MM;
    let outside: Vec<f64> = [sx, sy]
        .into_iter()
        .filter(|s| !(lo..=hi).contains(s))
        .collect();
    if !outside.is_empty() {
        out.push(Caveat::new(
            CaveatKind::PixelSpacing,
            format!(
                "pixel spacing {} × {} mm outside {lo}–{hi} mm",
                mm(sy),
                mm(sx)
            ),
        ));
    }
    if let Some(agent) = series
        .contrast_agent
        .as_deref()
        .filter(|a| says_contrast(a))
    {
        out.push(Caveat::new(
            CaveatKind::Contrast,
            format!("contrast agent {agent:?} (ContrastBolusAgent): models not validated on contrast-enhanced CT"),
        ));
    }
    let described_low = [
        series.series_description.as_deref(),
        Some(series.patient_study.study_description.as_str()),
    ]
    .into_iter()
    .flatten()
    .any(says_low_dose);
    let ctdi_low = series
        .ctdi_vol_mgy
        .filter(|c| c.is_finite() && *c > 0.0 && *c <= LOW_DOSE_CTDI_MGY);
    if let Some(ctdi) = ctdi_low {
        out.push(Caveat::new(
            CaveatKind::LowDose,
            format!(
                "CTDIvol {} mGy ≤ {LOW_DOSE_CTDI_MGY} mGy (low-dose CT): more noise than most LUNA16 scans",
                mm(ctdi)
            ),
        ));
    } else if described_low {
        out.push(Caveat::new(
            CaveatKind::LowDose,
            "the series or study description says low dose: more noise than most LUNA16 scans",
        ));
    }
    out
}

/// Whether a ContrastBolusAgent value names an agent (not "none", "no", "-", "0", "n/a").
fn says_contrast(agent: &str) -> bool {
    let a = agent.trim().to_ascii_lowercase();
    !a.is_empty() && !["none", "no", "n", "-", "0", "n/a", "na", "nil"].contains(&a.as_str())
}

/// Whether a description says low dose (`low dose`, `low-dose`, `lowdose`, `LDCT`).
fn says_low_dose(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    let squashed: String = t.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    squashed.contains("lowdose")
        || t.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == "ldct")
}

/// Fraction of voxels in the aerated-lung band [`LUNG_HU`].
pub fn lung_fraction(hu: ArrayView3<'_, f32>) -> f64 {
    if hu.is_empty() {
        return 0.0;
    }
    let (lo, hi) = LUNG_HU;
    let lung = hu.iter().filter(|&&v| v >= lo && v <= hi).count();
    lung as f64 / hu.len() as f64
}

/// The `no-lung-field` caveat when under [`MIN_LUNG_FRACTION`] of the voxels are aerated lung.
pub fn of_lung_field(lung_fraction: f64) -> Option<Caveat> {
    (lung_fraction < MIN_LUNG_FRACTION).then(|| {
        Caveat::new(
            CaveatKind::NoLungField,
            format!(
                "aerated lung ({} to {} HU) is {:.1} % of the volume, under {:.0} %: is this a chest CT?",
                LUNG_HU.0,
                LUNG_HU.1,
                100.0 * lung_fraction,
                100.0 * MIN_LUNG_FRACTION
            ),
        )
    })
}

/// Whether a model's metadata says it was trained on synthetic data (see the module docs).
pub fn synthetic_model(info: &ModelInfo) -> bool {
    let flag = info
        .metadata
        .get("noduled.synthetic")
        .map(|v| v.trim().to_ascii_lowercase());
    if let Some(v) = flag {
        return matches!(v.as_str(), "true" | "yes" | "1");
    }
    ["noduled.source", "noduled.train_series"]
        .iter()
        .any(|key| {
            info.metadata.get(*key).is_some_and(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("synthetic") || v.contains("phantom")
            })
        })
}

/// The `synthetic-models` caveat naming every model trained on synthetic data, if any.
pub fn of_models<'a>(models: impl IntoIterator<Item = &'a ModelInfo>) -> Option<Caveat> {
    let names: Vec<&str> = models
        .into_iter()
        .filter(|m| synthetic_model(m))
        .map(|m| m.name.as_str())
        .collect();
    (!names.is_empty()).then(|| {
        Caveat::new(
            CaveatKind::SyntheticModels,
            format!(
                "{} trained on synthetic data: for the demo and tests, not for real CTs",
                names.join(", ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Geometry, SeriesInfo};
    use ndarray::Array3;
    use std::collections::BTreeMap;

    fn volume(slices: usize, spacing: [f64; 3], series: SeriesInfo) -> Volume {
        Volume {
            hu: Array3::from_elem((slices, 8, 8), -850.0),
            geometry: Geometry::axial([0.0; 3], spacing),
            series,
        }
    }

    fn names(caveats: &[Caveat]) -> Vec<&'static str> {
        caveats.iter().map(|c| c.name.name()).collect()
    }

    #[test]
    fn luna16_like_series_has_no_caveat() {
        let v = volume(
            133,
            [0.703125, 0.703125, 2.5],
            SeriesInfo {
                slice_thickness_mm: Some(2.5),
                ctdi_vol_mgy: Some(12.0),
                contrast_agent: Some("NONE".into()),
                ..SeriesInfo::default()
            },
        );
        assert!(of_series(&v).is_empty(), "{:?}", of_series(&v));
    }

    #[test]
    fn thick_slices_by_thickness_or_step() {
        let by_tag = volume(
            40,
            [0.7, 0.7, 2.5],
            SeriesInfo {
                slice_thickness_mm: Some(5.0),
                ..SeriesInfo::default()
            },
        );
        let c = of_series(&by_tag);
        assert_eq!(names(&c), ["thick-slices"]);
        assert!(c[0].detail.contains("slice thickness 5 mm"), "{}", c[0]);
        let by_step = volume(40, [0.7, 0.7, 3.0], SeriesInfo::default());
        let c = of_series(&by_step);
        assert_eq!(names(&c), ["thick-slices"]);
        assert!(c[0].detail.contains("slice step 3 mm"), "{}", c[0]);
        let at_limit = volume(40, [0.7, 0.7, 2.5], SeriesInfo::default());
        assert!(of_series(&at_limit).is_empty());
    }

    #[test]
    fn few_slices_and_pixel_spacing() {
        let c = of_series(&volume(31, [0.7, 0.7, 1.0], SeriesInfo::default()));
        assert_eq!(names(&c), ["few-slices"]);
        assert!(c[0].detail.starts_with("31 slices < 32"), "{}", c[0]);
        assert!(of_series(&volume(32, [0.7, 0.7, 1.0], SeriesInfo::default())).is_empty());
        for spacing in [0.45, 1.2] {
            let c = of_series(&volume(40, [spacing, spacing, 1.0], SeriesInfo::default()));
            assert_eq!(names(&c), ["pixel-spacing"], "{spacing}");
        }
        assert!(of_series(&volume(40, [0.5, 1.0, 1.0], SeriesInfo::default())).is_empty());
    }

    #[test]
    fn contrast_and_low_dose_from_the_header() {
        let contrast = SeriesInfo {
            contrast_agent: Some("Omnipaque 350".into()),
            ..SeriesInfo::default()
        };
        let c = of_series(&volume(40, [0.7, 0.7, 1.0], contrast));
        assert_eq!(names(&c), ["contrast"]);
        assert!(c[0].detail.contains("Omnipaque 350"));
        for none in ["NONE", "no", "-", " "] {
            assert!(!says_contrast(none), "{none:?}");
        }
        let low = SeriesInfo {
            ctdi_vol_mgy: Some(1.4),
            ..SeriesInfo::default()
        };
        let c = of_series(&volume(40, [0.7, 0.7, 1.0], low));
        assert_eq!(names(&c), ["low-dose"]);
        assert!(c[0].detail.contains("CTDIvol 1.4 mGy"), "{}", c[0]);
        let described = SeriesInfo {
            series_description: Some("CHEST LOW-DOSE SCREENING".into()),
            ctdi_vol_mgy: Some(8.0),
            ..SeriesInfo::default()
        };
        assert_eq!(
            names(&of_series(&volume(40, [0.7, 0.7, 1.0], described))),
            ["low-dose"]
        );
        assert!(says_low_dose("LDCT chest") && !says_low_dose("CHEST W CONTRAST"));
    }

    #[test]
    fn lung_field() {
        let mut hu = Array3::from_elem((4, 10, 10), 40.0f32);
        assert_eq!(lung_fraction(hu.view()), 0.0);
        assert!(of_lung_field(lung_fraction(hu.view())).is_some());
        hu.slice_mut(ndarray::s![.., 0..5, ..]).fill(-850.0);
        assert!((lung_fraction(hu.view()) - 0.5).abs() < 1e-12);
        assert!(of_lung_field(0.5).is_none());
        assert_eq!(
            of_lung_field(0.01).map(|c| c.name),
            Some(CaveatKind::NoLungField)
        );
    }

    fn info(name: &str, metadata: &[(&str, &str)]) -> ModelInfo {
        ModelInfo {
            path: name.into(),
            name: name.into(),
            sha256: String::new(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            input_name: String::new(),
            input_shape: Vec::new(),
            output_names: Vec::new(),
        }
    }

    #[test]
    fn synthetic_models_by_metadata() {
        let book = info(
            "nodule_cls.onnx",
            &[(
                "noduled.source",
                "Deep Learning with PyTorch, ch. 14, LUNA16",
            )],
        );
        let flagged = info("seg.onnx", &[("noduled.synthetic", "true")]);
        let phantom = info(
            "cls.onnx",
            &[("noduled.source", "trained by noduled on Phantom CTs")],
        );
        let denied = info(
            "x.onnx",
            &[
                ("noduled.synthetic", "false"),
                ("noduled.source", "phantom"),
            ],
        );
        assert!(!synthetic_model(&book) && !synthetic_model(&denied));
        assert!(synthetic_model(&flagged) && synthetic_model(&phantom));
        assert!(of_models([&book, &denied]).is_none());
        let c = of_models([&book, &flagged, &phantom]).unwrap();
        assert_eq!(c.name, CaveatKind::SyntheticModels);
        assert!(c
            .detail
            .starts_with("seg.onnx, cls.onnx trained on synthetic data"));
    }

    #[test]
    fn policies_pick_the_refused_caveat() {
        let caveats = [
            Caveat::new(CaveatKind::ThickSlices, "a"),
            Caveat::new(CaveatKind::FewSlices, "b"),
        ];
        assert!(CaveatPolicies::default().refused(&caveats).is_none());
        let policies = CaveatPolicies {
            few_slices: CaveatPolicy::Refuse,
            ..CaveatPolicies::default()
        };
        assert_eq!(
            policies.refused(&caveats).map(|c| c.name),
            Some(CaveatKind::FewSlices)
        );
        for kind in CaveatKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
    }
}
