//! Nodules: how many are malignant, how big they are, what they look like, and where they sit.
//!
//! Sizes and the malignant share follow the book's LUNA16 malignancy table; shapes follow the
//! radiology: benign nodules are small and smooth (some calcified), malignant ones larger and
//! lobulated, spiculated or part-solid with a ground-glass rim. Some nodules are placed against
//! the pleura or against a vessel, the cases a detector finds hardest. Every nodule's centre is in
//! a lung and solid, and its centre lies within 0.3 slice steps of a slice plane so the centre
//! voxel really shows it.

use super::anatomy::Anatomy;
use super::trees::{add, dot, norm, normalise, random_unit, scale, sub, Segment};
use super::{Frame, NoduleAttachment, NoduleKind};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

// Numbers below come from ../shared/data/luna16_annotations_with_malignancy.csv (the book's
// malignancy table: 1182 LUNA16 nodules, LIDC-IDRI reader consensus): 378 malignant (32.0 %).
// Malignant diameters 4.33–32.27 mm, median 12.10 mm, mean of ln(d) = ln(11.93), sd of ln(d) 0.414.
// Benign diameters 3.25–26.84 mm, median 5.64 mm, mean of ln(d) = ln(5.82), sd of ln(d) 0.288.
// (All 1186 LUNA16 annotations: 3.25–32.27 mm, median 6.43 mm, roughly log-normal.)
const MALIGNANT_FRACTION: f64 = 0.32;
const MALIGNANT_LOG_MEDIAN_MM: f64 = 11.93;
const MALIGNANT_LOG_SD: f64 = 0.414;
const MALIGNANT_RANGE_MM: (f64, f64) = (4.33, 32.27);
const BENIGN_LOG_MEDIAN_MM: f64 = 5.82;
const BENIGN_LOG_SD: f64 = 0.288;
const BENIGN_RANGE_MM: (f64, f64) = (3.25, 26.84);
/// LUNA16 excludes nodules under 3 mm; we never shrink below its smallest annotation.
const MIN_DIAMETER_MM: f64 = 3.25;

/// One solid piece of a nodule drawn with hu = max(hu, mix(hu, `hu`, coverage)).
#[derive(Debug, Clone)]
pub(crate) enum Primitive {
    Sphere { c: [f64; 3], r: f64, hu: f32 },
    Tube { seg: Segment, hu: f32 },
}

impl Primitive {
    /// Distance from `p` to the primitive's centre (line) and its radius there.
    pub(crate) fn distance(&self, p: [f64; 3]) -> (f64, f64) {
        match self {
            Primitive::Sphere { c, r, .. } => (norm(sub(p, *c)), *r),
            Primitive::Tube { seg, .. } => seg.distance(p),
        }
    }

    pub(crate) fn hu(&self) -> f32 {
        match self {
            Primitive::Sphere { hu, .. } | Primitive::Tube { hu, .. } => *hu,
        }
    }

    /// Patient-space bounding box `[min, max]`.
    pub(crate) fn bounds(&self) -> ([f64; 3], [f64; 3]) {
        match self {
            Primitive::Sphere { c, r, .. } => (sub(*c, [*r; 3]), add(*c, [*r; 3])),
            Primitive::Tube { seg, .. } => {
                let r = seg.outer();
                let lo = [0, 1, 2].map(|k| seg.a[k].min(seg.b[k]) - r);
                let hi = [0, 1, 2].map(|k| seg.a[k].max(seg.b[k]) + r);
                (lo, hi)
            }
        }
    }
}

/// A placed nodule: its annotation and the primitives that draw it (ground glass first).
#[derive(Debug, Clone)]
pub(crate) struct PlacedNodule {
    pub center: [f64; 3],
    pub diameter_mm: f64,
    pub malignant: bool,
    pub kind: NoduleKind,
    pub attachment: NoduleAttachment,
    pub primitives: Vec<Primitive>,
}

/// Places up to `count` nodules (fewer only when the lungs in the field of view are too small),
/// clear of the lesions already `existing` (masses); returns the new nodules only.
pub(crate) fn place_after(
    anatomy: &Anatomy,
    frame: &Frame,
    vessels: &[Segment],
    count: usize,
    existing: &[PlacedNodule],
    rng: &mut ChaCha8Rng,
) -> Vec<PlacedNodule> {
    let mut placed: Vec<PlacedNodule> = existing.to_vec();
    let attachable: Vec<&Segment> = vessels
        .iter()
        .filter(|s| s.ra.min(s.rb) >= 0.7 * anatomy.s.min(1.0))
        .collect();
    for _ in 0..count {
        let malignant = rng.random_bool(MALIGNANT_FRACTION);
        let mut diameter = if malignant {
            log_normal(
                rng,
                MALIGNANT_LOG_MEDIAN_MM,
                MALIGNANT_LOG_SD,
                MALIGNANT_RANGE_MM,
            )
        } else {
            log_normal(rng, BENIGN_LOG_MEDIAN_MM, BENIGN_LOG_SD, BENIGN_RANGE_MM)
        };
        let roll: f64 = rng.random();
        let mut attachment = if roll < 0.25 {
            NoduleAttachment::Pleural
        } else if roll < 0.45 && !attachable.is_empty() {
            NoduleAttachment::Vascular
        } else {
            NoduleAttachment::Free
        };
        let mut centre = None;
        for round in 0..8 {
            if round >= 4 {
                attachment = NoduleAttachment::Free;
            }
            let r = diameter / 2.0;
            for _ in 0..300 {
                let candidate = match attachment {
                    NoduleAttachment::Free => free_candidate(anatomy, frame, r, rng),
                    NoduleAttachment::Pleural | NoduleAttachment::Mediastinal => {
                        pleural_candidate(anatomy, frame, r, rng)
                    }
                    NoduleAttachment::Vascular => vascular_candidate(frame, r, &attachable, rng),
                };
                let Some(c) = candidate else { continue };
                if acceptable(anatomy, frame, c, r, attachment, &placed)
                    && (attachment != NoduleAttachment::Free
                        || clear_of_vessels(vessels, c, r + 1.0))
                {
                    centre = Some(c);
                    break;
                }
            }
            if centre.is_some() || diameter <= MIN_DIAMETER_MM {
                break;
            }
            diameter = (diameter * 0.8).max(MIN_DIAMETER_MM);
        }
        let Some(center) = centre else { continue };
        let kind = draw_kind(malignant, diameter, rng);
        let primitives = shape(kind, center, diameter / 2.0, anatomy.s, rng);
        placed.push(PlacedNodule {
            center,
            diameter_mm: diameter,
            malignant,
            kind,
            attachment,
            primitives,
        });
    }
    placed.split_off(existing.len())
}

/// Places one mass per diameter in `diameters_mm` against the chest wall or the mediastinum: a
/// point of lung is walked in a random axial direction to the lung's edge and the mass centred
/// 0.8 r back from it, so about a fifth of it bulges into the wall (or mediastinum) it touches.
/// A mass that finds no room in 4000 tries is left out (the caller sees fewer masses).
pub(crate) fn place_masses(
    anatomy: &Anatomy,
    frame: &Frame,
    diameters_mm: &[f64],
    rng: &mut ChaCha8Rng,
) -> Vec<PlacedNodule> {
    let mut placed: Vec<PlacedNodule> = Vec::new();
    for &diameter in diameters_mm {
        let r = diameter / 2.0;
        let mut found = None;
        for attempt in 0..4000 {
            let Some((c, mediastinal)) = wall_candidate(anatomy, frame, r, rng) else {
                continue;
            };
            // The strict juxtapleural test first; large masses in small lungs then get a looser
            // one (centre well inside the lung, lung on a third of its surroundings).
            let ok = if attempt < 2000 {
                acceptable(anatomy, frame, c, r, NoduleAttachment::Pleural, &placed)
            } else {
                loose_mass_fit(anatomy, frame, c, r, &placed)
            };
            if ok {
                found = Some((c, mediastinal));
                break;
            }
        }
        let Some((center, mediastinal)) = found else {
            continue;
        };
        let primitives = mass_shape(center, r, anatomy.s, rng);
        placed.push(PlacedNodule {
            center,
            diameter_mm: diameter,
            malignant: true,
            kind: NoduleKind::Mass,
            attachment: if mediastinal {
                NoduleAttachment::Mediastinal
            } else {
                NoduleAttachment::Pleural
            },
            primitives,
        });
    }
    placed
}

/// Like [`pleural_candidate`], and whether the wall reached is the mediastinum (the walk went
/// towards the body's midline).
fn wall_candidate(
    anatomy: &Anatomy,
    frame: &Frame,
    r: f64,
    rng: &mut ChaCha8Rng,
) -> Option<([f64; 3], bool)> {
    let start = free_candidate(anatomy, frame, r, rng)?;
    if !anatomy.in_lung(start[0], start[1], start[2]) {
        return None;
    }
    let angle = rng.random_range(0.0..std::f64::consts::TAU);
    let dir = [angle.cos(), angle.sin(), 0.0];
    let step = 0.5 * anatomy.s.min(1.0);
    let mut t = 0.0;
    while t < 2.0 * anatomy.a {
        let p = add(start, scale(dir, t + step));
        if !anatomy.in_lung(p[0], p[1], p[2]) {
            let mediastinal = (p[0] - anatomy.cx).abs() < (start[0] - anatomy.cx).abs();
            return Some((add(start, scale(dir, t - 0.8 * r)), mediastinal));
        }
        t += step;
    }
    None
}

/// The looser placement test for big masses: centre in lung and inside the image, clear of the
/// other lesions, lung at a third of the points half a radius out, and not all around.
fn loose_mass_fit(
    anatomy: &Anatomy,
    frame: &Frame,
    c: [f64; 3],
    r: f64,
    placed: &[PlacedNodule],
) -> bool {
    let inside = |p: [f64; 3]| anatomy.in_lung(p[0], p[1], p[2]);
    if !inside(c) || !frame.contains_xy(c, r + 2.0) {
        return false;
    }
    if placed
        .iter()
        .any(|n| norm(sub(n.center, c)) < n.diameter_mm / 2.0 + r + 3.0)
    {
        return false;
    }
    let half = directions()
        .filter(|&d| inside(add(c, scale(d, 0.5 * r))))
        .count();
    let rim = directions()
        .filter(|&d| inside(add(c, scale(d, r + 1.0))))
        .count();
    half >= 9 && rim < 26
}

/// An irregular, lobulated mass of radius `r` at `c`: a core of 0.75 r, 6–9 lobes of 0.3–0.45 r
/// reaching the full radius, and a few short, thick spicules; soft tissue of 25–50 HU.
fn mass_shape(c: [f64; 3], r: f64, s: f64, rng: &mut ChaCha8Rng) -> Vec<Primitive> {
    let hu = rng.random_range(25.0..50.0);
    let mut prims = vec![Primitive::Sphere { c, r: 0.75 * r, hu }];
    for _ in 0..rng.random_range(6..10) {
        let lr = r * rng.random_range(0.3..0.45);
        prims.push(Primitive::Sphere {
            c: add(c, scale(random_unit(rng), r - lr)),
            r: lr,
            hu,
        });
    }
    for _ in 0..rng.random_range(4..8) {
        let d = random_unit(rng);
        prims.push(Primitive::Tube {
            seg: Segment {
                a: add(c, scale(d, 0.7 * r)),
                b: add(c, scale(d, r * rng.random_range(1.05..1.25))),
                ra: (rng.random_range(1.0..2.0) * s.min(1.0)).max(0.5),
                rb: 0.4,
                wall: 0.0,
            },
            hu: hu - 10.0,
        });
    }
    prims
}

fn log_normal(rng: &mut ChaCha8Rng, median: f64, sd: f64, range: (f64, f64)) -> f64 {
    for _ in 0..32 {
        let z: f64 = StandardNormal.sample(rng);
        let d = median * (sd * z).exp();
        if d >= range.0 && d <= range.1 {
            return d;
        }
    }
    median
}

fn draw_kind(malignant: bool, diameter: f64, rng: &mut ChaCha8Rng) -> NoduleKind {
    let roll: f64 = rng.random();
    if malignant {
        if roll < 0.25 && diameter >= 8.0 {
            NoduleKind::PartSolid
        } else if roll < 0.6 {
            NoduleKind::Spiculated
        } else {
            NoduleKind::Lobulated
        }
    } else if roll < 0.25 {
        NoduleKind::Calcified
    } else {
        NoduleKind::Solid
    }
}

/// Slices a nodule of radius `r` may be centred on (within ±0.3 steps) and still lie wholly
/// inside the scanned range.
fn centre_slices(frame: &Frame, r: f64) -> Option<(usize, usize)> {
    let margin = ((r + 0.3 * frame.step) / frame.step).ceil() as usize;
    let last = frame.slices.checked_sub(1 + margin)?;
    (margin <= last).then_some((margin, last))
}

/// A centre height close to a slice plane, with room for the whole nodule inside the scan.
fn centre_z(frame: &Frame, r: f64, rng: &mut ChaCha8Rng) -> Option<f64> {
    let (first, last) = centre_slices(frame, r)?;
    let index = rng.random_range(first..=last);
    Some(frame.z(index) + rng.random_range(-0.3..0.3) * frame.step)
}

/// Moves `z` to within ±0.3 steps of its nearest slice plane, if the nodule then fits the scan.
fn snap_z(frame: &Frame, z: f64, r: f64, rng: &mut ChaCha8Rng) -> Option<f64> {
    let (first, last) = centre_slices(frame, r)?;
    let index = ((z - frame.origin[2]) / frame.step).round();
    if index < first as f64 || index > last as f64 {
        return None;
    }
    Some(frame.z(index as usize) + rng.random_range(-0.3..0.3) * frame.step)
}

fn free_candidate(
    anatomy: &Anatomy,
    frame: &Frame,
    r: f64,
    rng: &mut ChaCha8Rng,
) -> Option<[f64; 3]> {
    let z = centre_z(frame, r, rng)?;
    Some([
        anatomy.cx + rng.random_range(-1.0..1.0) * anatomy.a,
        anatomy.cy + rng.random_range(-1.0..1.0) * anatomy.b,
        z,
    ])
}

/// Walks from a random lung point to the pleura and backs off by 0.8 r: the nodule bulges a
/// little into the chest wall or mediastinum, as juxtapleural nodules do.
fn pleural_candidate(
    anatomy: &Anatomy,
    frame: &Frame,
    r: f64,
    rng: &mut ChaCha8Rng,
) -> Option<[f64; 3]> {
    let start = free_candidate(anatomy, frame, r, rng)?;
    if !anatomy.in_lung(start[0], start[1], start[2]) {
        return None;
    }
    let angle = rng.random_range(0.0..std::f64::consts::TAU);
    let dir = [angle.cos(), angle.sin(), 0.0];
    let step = 0.5 * anatomy.s.min(1.0);
    let mut t = 0.0;
    while t < 2.0 * anatomy.a {
        let p = add(start, scale(dir, t + step));
        if !anatomy.in_lung(p[0], p[1], p[2]) {
            return Some(add(start, scale(dir, t - 0.8 * r)));
        }
        t += step;
    }
    None
}

/// Puts the nodule against the side of a vessel of at least ~0.7 mm radius.
fn vascular_candidate(
    frame: &Frame,
    r: f64,
    vessels: &[&Segment],
    rng: &mut ChaCha8Rng,
) -> Option<[f64; 3]> {
    let seg = vessels[rng.random_range(0..vessels.len())];
    let t = rng.random_range(0.2..0.8);
    let axis = sub(seg.b, seg.a);
    let point = add(seg.a, scale(axis, t));
    let radius = seg.ra + t * (seg.rb - seg.ra);
    let random = random_unit(rng);
    let dir = normalise(sub(
        random,
        scale(normalise(axis), dot(random, normalise(axis))),
    ));
    let c = add(point, scale(dir, r + 0.6 * radius));
    let z = snap_z(frame, c[2], r, rng)?;
    Some([c[0], c[1], z])
}

/// Whether no vessel comes within `reach` mm of `c` (free nodules are surrounded by lung).
fn clear_of_vessels(vessels: &[Segment], c: [f64; 3], reach: f64) -> bool {
    vessels.iter().all(|seg| {
        let (d, r) = seg.distance(c);
        d - r > reach
    })
}

/// The 26 directions to the faces, edges and corners of a cube.
fn directions() -> impl Iterator<Item = [f64; 3]> {
    (-1i32..=1)
        .flat_map(|i| {
            (-1i32..=1).flat_map(move |j| (-1i32..=1).map(move |k| [i as f64, j as f64, k as f64]))
        })
        .filter(|d| d != &[0.0, 0.0, 0.0])
        .map(normalise)
}

fn acceptable(
    anatomy: &Anatomy,
    frame: &Frame,
    c: [f64; 3],
    r: f64,
    attachment: NoduleAttachment,
    placed: &[PlacedNodule],
) -> bool {
    let inside = |p: [f64; 3]| anatomy.in_lung(p[0], p[1], p[2]);
    if !inside(c) || !frame.contains_xy(c, r + 2.0) {
        return false;
    }
    if placed
        .iter()
        .any(|n| norm(sub(n.center, c)) < n.diameter_mm / 2.0 + r + 3.0)
    {
        return false;
    }
    match attachment {
        NoduleAttachment::Pleural | NoduleAttachment::Mediastinal => {
            // Centre well inside, some of the rim outside the lung, but lung on the far side:
            // against a wall, not wedged into a lung tip smaller than the nodule.
            let around = |reach: f64| {
                directions()
                    .filter(|&d| inside(add(c, scale(d, reach))))
                    .count()
            };
            directions().all(|d| inside(add(c, scale(d, 0.5 * r))))
                && (11..26).contains(&around(r + 1.0))
                && around(r + 3.0) >= 10
        }
        NoduleAttachment::Free | NoduleAttachment::Vascular => [r + 1.0, r + 3.0]
            .iter()
            .all(|&reach| directions().all(|d| inside(add(c, scale(d, reach))))),
    }
}

/// The primitives of one nodule of radius `r` centred at `c`.
fn shape(kind: NoduleKind, c: [f64; 3], r: f64, s: f64, rng: &mut ChaCha8Rng) -> Vec<Primitive> {
    let solid_hu = rng.random_range(15.0..55.0);
    let core = if r < 3.0 { r } else { 0.72 * r };
    let mut prims = Vec::new();
    match kind {
        NoduleKind::Mass => return mass_shape(c, r, s, rng),
        NoduleKind::Solid => prims.push(Primitive::Sphere { c, r, hu: solid_hu }),
        NoduleKind::Calcified => {
            prims.push(Primitive::Sphere { c, r, hu: solid_hu });
            let cr = (r * rng.random_range(0.4..0.9)).max(1.0_f64.min(r));
            let offset = scale(random_unit(rng), (r - cr) * rng.random_range(0.0..0.5));
            prims.push(Primitive::Sphere {
                c: add(c, offset),
                r: cr,
                hu: rng.random_range(250.0..700.0),
            });
        }
        NoduleKind::Lobulated | NoduleKind::Spiculated => {
            prims.push(Primitive::Sphere {
                c,
                r: core,
                hu: solid_hu,
            });
            let lobes = if kind == NoduleKind::Lobulated {
                rng.random_range(4..8)
            } else {
                rng.random_range(2..4)
            };
            for _ in 0..lobes {
                let lr = r * rng.random_range(0.3..0.5);
                prims.push(Primitive::Sphere {
                    c: add(c, scale(random_unit(rng), r - lr)),
                    r: lr,
                    hu: solid_hu,
                });
            }
            if kind == NoduleKind::Spiculated {
                for _ in 0..rng.random_range(14..28) {
                    let d = random_unit(rng);
                    let width = rng.random_range(0.6..1.2) * s.min(1.0);
                    prims.push(Primitive::Tube {
                        seg: Segment {
                            a: add(c, scale(d, 0.6 * r)),
                            b: add(c, scale(d, r * rng.random_range(1.3..2.3))),
                            ra: width.max(0.35),
                            rb: 0.25,
                            wall: 0.0,
                        },
                        hu: solid_hu - 10.0,
                    });
                }
            }
        }
        NoduleKind::PartSolid => {
            let glass = rng.random_range(-600.0..-450.0);
            prims.push(Primitive::Sphere { c, r, hu: glass });
            for _ in 0..2 {
                let lr = r * rng.random_range(0.4..0.6);
                prims.push(Primitive::Sphere {
                    c: add(c, scale(random_unit(rng), r - lr)),
                    r: lr,
                    hu: glass,
                });
            }
            prims.push(Primitive::Sphere {
                c,
                r: r * rng.random_range(0.4..0.6),
                hu: solid_hu,
            });
        }
    }
    prims
}
