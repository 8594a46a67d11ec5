//! The analytic chest: body outline and wall layers, ribs, sternum, scapulae, spine, mediastinum
//! (heart, aorta, oesophagus, fat), lungs bounded by apices and diaphragm domes, and the upper
//! abdomen. Everything is a closed-form test on patient millimetres, so one slice can be rendered
//! without looking at any other and the same tests place vessels and nodules "inside a lung".
//!
//! Sizes are written for an adult whose body is 320 mm wide (`s = 1`) and scaled by `s`, which is
//! chosen so the body fills the field of view: a 64×64 phantom is a small but complete chest.
//! Directions follow DICOM LPS with the patient head-first supine: +x is the patient's left (image
//! right), +y posterior (image bottom), +z towards the head.

use super::Frame;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::f64::consts::PI;

/// Tissue labels the rasteriser needs: vessels are only drawn on lung, airways on lung and soft
/// tissue, and nothing replaces bone.
pub(crate) const LABEL_AIR: u8 = 0;
pub(crate) const LABEL_SOFT: u8 = 1;
pub(crate) const LABEL_BONE: u8 = 2;
pub(crate) const LABEL_LUNG: u8 = 3;

const HU_AIR: f32 = -1000.0;
const HU_SKIN: f32 = 30.0;
const HU_MUSCLE: f32 = 45.0;
const HU_SOFT: f32 = 40.0;
const HU_BLOOD: f32 = 40.0;
const HU_CORTEX: f32 = 850.0;
const HU_MARROW: f32 = 280.0;
const HU_CANCELLOUS: f32 = 230.0;
const HU_CARTILAGE: f32 = 130.0;
const HU_DISC: f32 = 90.0;
const HU_CSF: f32 = 10.0;
const HU_LIVER: f32 = 58.0;
const HU_SPLEEN: f32 = 45.0;

/// One rib (the same shape on both sides, with a small per-side height jitter).
#[derive(Debug, Clone)]
struct Rib {
    /// Height (mm) of the posterior end, beside the spine, on the right and on the left.
    z0: [f64; 2],
    /// Angle from posterior (rad) where the bony rib ends.
    tau_bone: f64,
    /// Angle where the costal cartilage ends (== `tau_bone` for floating ribs).
    tau_cart: f64,
}

/// The patient: every size and position the closed-form tests need.
#[derive(Debug, Clone)]
pub(crate) struct Anatomy {
    /// Scale: 1.0 is a 320 mm wide adult.
    pub s: f64,
    /// Body centre in patient mm.
    pub cx: f64,
    pub cy: f64,
    /// Body semi-axes (mm) at chest level.
    pub a: f64,
    pub b: f64,
    skin: f64,
    fat: f64,
    d_rib: f64,
    rib_t: f64,
    d_in: f64,
    /// Height of the carina (mm): the anatomical reference level.
    pub z_ref: f64,
    /// Vertebral body centre and trachea centre, y relative to `cy`.
    pub yv: f64,
    pub yt: f64,
    lung_hu: f64,
    lung_grad: f64,
    fat_hu: f32,
    ribs: Vec<Rib>,
    rib_drop: f64,
    rib_half: f64,
    vert_phase: f64,
    /// Minimum cortical thickness (mm) so bone edges survive the pixel grid.
    cortex: f64,
    table_top: f64,
}

/// Everything about one axial plane that does not depend on (x, y).
#[derive(Debug, Clone)]
pub(crate) struct ZCtx {
    pub z: f64,
    a: f64,
    b: f64,
    heart: Option<[f64; 4]>,
    ascending: bool,
    descending: bool,
    arch_half: Option<f64>,
    disc: bool,
    sternum: bool,
    scapula: bool,
    bubble: Option<[f64; 4]>,
}

/// Angular extents (from posterior, rad) of ribs cut by one plane: `[right, left]` lists of
/// `(low, high, cartilage)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RibSlice {
    sides: [Vec<(f64, f64, bool)>; 2],
}

enum Interior {
    Lung,
    Soft(f32),
}

impl Anatomy {
    /// Draws a patient that fills `frame`'s field of view.
    pub(crate) fn new(frame: &Frame, rng: &mut ChaCha8Rng) -> Anatomy {
        let fov_x = frame.columns as f64 * frame.spacing;
        let fov_y = frame.rows as f64 * frame.spacing;
        let aspect = rng.random_range(0.66..0.78);
        let s = (0.42 * fov_x / 160.0).min(0.40 * fov_y / (aspect * 160.0));
        let a = 160.0 * s;
        let b = aspect * a;
        let centre_x = frame.origin[0] + (frame.columns as f64 - 1.0) * frame.spacing / 2.0;
        let centre_y = frame.origin[1] + (frame.rows as f64 - 1.0) * frame.spacing / 2.0;
        let cx = centre_x + rng.random_range(-0.02..0.02) * fov_x;
        let cy = centre_y - 0.03 * fov_y + rng.random_range(-0.01..0.01) * fov_y;
        let skin = 2.0 * s;
        let fat = rng.random_range(6.0..22.0) * s;
        let muscle = 11.0 * s;
        let rib_t = 9.0 * s;
        let d_rib = skin + fat + muscle;
        let d_in = d_rib + rib_t + 3.0 * s;
        let yv = b - 72.0 * s;
        let yt = yv - 45.0 * s;
        let ribs = (0..12)
            .map(|k| {
                let base = frame.z_ref + 88.0 * s - k as f64 * 20.0 * s;
                let (tau_bone, tau_cart) = match k {
                    0..=6 => (2.55, 2.95),
                    7..=9 => (2.2, 2.6),
                    10 => (1.6, 1.6),
                    _ => (1.3, 1.3),
                };
                Rib {
                    z0: [
                        base + rng.random_range(-1.5..1.5) * s,
                        base + rng.random_range(-1.5..1.5) * s,
                    ],
                    tau_bone,
                    tau_cart,
                }
            })
            .collect();
        Anatomy {
            s,
            cx,
            cy,
            a,
            b,
            skin,
            fat,
            d_rib,
            rib_t,
            d_in,
            z_ref: frame.z_ref,
            yv,
            yt,
            lung_hu: rng.random_range(-875.0..-855.0),
            lung_grad: rng.random_range(30.0..60.0),
            fat_hu: rng.random_range(-110.0..-90.0),
            ribs,
            rib_drop: 65.0 * s,
            rib_half: 5.5 * s,
            vert_phase: rng.random_range(0.0..25.0) * s,
            cortex: (1.4 * s).max(0.9 * frame.spacing),
            table_top: cy + b + 1.0,
        }
    }

    /// Height of the lung apices and of the diaphragm: the z range any lung can occupy.
    pub(crate) fn lung_z_range(&self) -> (f64, f64) {
        (self.z_ref - 186.0 * self.s, self.z_ref + 92.0 * self.s)
    }

    /// Hilum points (arterial, venous) of the right (`side` 0) and left (`side` 1) lung.
    pub(crate) fn hila(&self, side: usize) -> [[f64; 3]; 2] {
        let s = self.s;
        let sign = if side == 0 { -1.0 } else { 1.0 };
        [
            [
                self.cx + sign * 40.0 * s,
                self.cy + self.yt - 6.0 * s,
                self.z_ref - 12.0 * s,
            ],
            [
                self.cx + sign * 42.0 * s,
                self.cy + self.yt - 20.0 * s,
                self.z_ref - 55.0 * s,
            ],
        ]
    }

    pub(crate) fn zctx(&self, z: f64) -> ZCtx {
        let s = self.s;
        let neck = ((z - (self.z_ref + 105.0 * s)) / (45.0 * s)).clamp(0.0, 1.0);
        let (hz, hc) = (self.z_ref - 85.0 * s, 55.0 * s);
        let heart = if (z - hz).abs() < hc {
            let k = (1.0 - ((z - hz) / hc).powi(2)).sqrt();
            Some([20.0 * s, self.yv - 65.0 * s, 58.0 * s * k, 40.0 * s * k])
        } else {
            None
        };
        let z_arch = self.z_ref + 32.0 * s;
        let arch_r = 13.0 * s;
        let arch_half =
            ((z - z_arch).abs() < arch_r).then(|| (arch_r * arch_r - (z - z_arch).powi(2)).sqrt());
        let level = (z - self.z_ref - self.vert_phase).rem_euclid(25.0 * s);
        // Gastric air bubble under the left dome.
        let (bz, bc) = (self.z_ref - 162.0 * s, 14.0 * s);
        let bubble = ((z - bz).abs() < bc).then(|| {
            let k = (1.0 - ((z - bz) / bc).powi(2)).sqrt();
            [0.42 * self.a, -0.05 * self.b, 30.0 * s * k, 26.0 * s * k]
        });
        ZCtx {
            z,
            a: self.a * (1.0 - 0.42 * neck),
            b: self.b * (1.0 - 0.22 * neck),
            heart,
            ascending: z > self.z_ref - 38.0 * s && z <= z_arch,
            descending: z <= z_arch,
            arch_half,
            disc: level < 5.0 * s,
            sternum: z > self.z_ref - 150.0 * s && z < self.z_ref + 70.0 * s,
            scapula: z > self.z_ref - 70.0 * s && z < self.z_ref + 85.0 * s,
            bubble,
        }
    }

    /// Where the ribs cross the plane of `zc`.
    pub(crate) fn rib_slice(&self, zc: &ZCtx) -> RibSlice {
        let mut out = RibSlice::default();
        let tau_of = |drop: f64| PI * (drop.max(0.0) / self.rib_drop).powf(1.0 / 1.2);
        for rib in &self.ribs {
            for (side, list) in out.sides.iter_mut().enumerate() {
                let z0 = rib.z0[side];
                let hi_drop = z0 - zc.z + self.rib_half;
                if hi_drop < 0.0 {
                    continue;
                }
                let lo = tau_of(z0 - zc.z - self.rib_half);
                let hi = tau_of(hi_drop).min(rib.tau_cart);
                if lo >= hi {
                    continue;
                }
                if lo < rib.tau_bone {
                    list.push((lo, hi.min(rib.tau_bone), false));
                }
                if hi > rib.tau_bone {
                    list.push((lo.max(rib.tau_bone), hi, true));
                }
            }
        }
        out
    }

    /// Whether the patient point (x, y, z) is lung parenchyma.
    pub(crate) fn in_lung(&self, x: f64, y: f64, z: f64) -> bool {
        let zc = self.zctx(z);
        self.in_lung_at(&zc, x, y)
    }

    /// [`Anatomy::in_lung`] with the plane context already built.
    pub(crate) fn in_lung_at(&self, zc: &ZCtx, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let Some(depth) = body_depth(zc, dx, dy) else {
            return false;
        };
        depth >= self.d_in
            && !self.paraspinal(dx, dy)
            && matches!(self.interior(zc, dx, dy), Interior::Lung)
    }

    /// Hounsfield value and label of the point (x, y) in the plane of `zc`.
    pub(crate) fn pixel(&self, zc: &ZCtx, ribs: &RibSlice, x: f64, y: f64) -> (f32, u8) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let Some(depth) = body_depth(zc, dx, dy) else {
            return self.outside(dx, y);
        };
        if depth < self.skin {
            return (HU_SKIN, LABEL_SOFT);
        }
        if depth < self.skin + self.fat {
            return (self.fat_hu, LABEL_SOFT);
        }
        if self.paraspinal(dx, dy) {
            return self.spine(zc, dx, dy);
        }
        let s = self.s;
        let un = dx / zc.a;
        let vn = dy / zc.b;
        if depth < self.d_rib {
            if zc.scapula && depth > self.d_rib - 10.0 * s && depth < self.d_rib - 5.0 * s {
                let tau = un.abs().atan2(vn);
                if (0.45..1.15).contains(&tau) {
                    return (HU_CORTEX, LABEL_BONE);
                }
            }
            return (HU_MUSCLE, LABEL_SOFT);
        }
        if zc.sternum
            && vn < 0.0
            && dx.abs() < 14.0 * s
            && depth > self.d_rib - 3.0 * s
            && depth < self.d_rib + self.rib_t + 2.0 * s
        {
            let edge = (14.0 * s - dx.abs())
                .min(depth - (self.d_rib - 3.0 * s))
                .min(self.d_rib + self.rib_t + 2.0 * s - depth);
            let hu = if edge < self.cortex {
                HU_CORTEX
            } else {
                HU_MARROW
            };
            return (hu, LABEL_BONE);
        }
        if depth < self.d_rib + self.rib_t {
            let tau = un.abs().atan2(vn);
            let side = usize::from(dx >= 0.0);
            let r = (dx * dx + dy * dy).sqrt();
            for &(lo, hi, cartilage) in &ribs.sides[side] {
                if tau >= lo && tau <= hi {
                    if cartilage {
                        return (HU_CARTILAGE, LABEL_SOFT);
                    }
                    let edge = (depth - self.d_rib)
                        .min(self.d_rib + self.rib_t - depth)
                        .min((tau - lo) * r)
                        .min((hi - tau) * r);
                    let hu = if edge < self.cortex {
                        HU_CORTEX
                    } else {
                        HU_MARROW
                    };
                    return (hu, LABEL_BONE);
                }
            }
            return (HU_MUSCLE, LABEL_SOFT);
        }
        if depth < self.d_in {
            return (HU_SOFT, LABEL_SOFT);
        }
        match self.interior(zc, dx, dy) {
            Interior::Lung => {
                let t = ((dy + zc.b) / (2.0 * zc.b)).clamp(0.0, 1.0);
                ((self.lung_hu + self.lung_grad * t) as f32, LABEL_LUNG)
            }
            Interior::Soft(hu) => (hu, LABEL_SOFT),
        }
    }

    /// Air around the patient, and the flat table under the back.
    fn outside(&self, dx: f64, y: f64) -> (f32, u8) {
        let s = self.s;
        let t = y - self.table_top;
        if dx.abs() < 0.8 * self.a && (0.0..10.0 * s).contains(&t) {
            let hu = if t < 1.5 * s || t > 8.5 * s {
                150.0
            } else {
                -550.0
            };
            return (hu, LABEL_AIR);
        }
        (HU_AIR, LABEL_AIR)
    }

    /// The spine and the paraspinal muscles: the region lungs never enter.
    fn paraspinal(&self, dx: f64, dy: f64) -> bool {
        let s = self.s;
        (dx.abs() < 42.0 * s && dy > self.yv + 22.0 * s)
            || (dx.abs() < 26.0 * s && dy > self.yv - 20.0 * s)
    }

    fn spine(&self, zc: &ZCtx, dx: f64, dy: f64) -> (f32, u8) {
        let s = self.s;
        let ax = dx.abs();
        let body_r = (dx * dx + (dy - self.yv).powi(2)).sqrt();
        if body_r < 17.0 * s {
            if zc.disc {
                return (HU_DISC, LABEL_SOFT);
            }
            let hu = if body_r > 17.0 * s - self.cortex {
                HU_CORTEX - 100.0
            } else {
                HU_CANCELLOUS
            };
            return (hu, LABEL_BONE);
        }
        let canal_y = self.yv + 27.0 * s;
        let canal_r = (dx * dx + (dy - canal_y).powi(2)).sqrt();
        if canal_r < 8.0 * s {
            return (HU_CSF, LABEL_SOFT);
        }
        let posterior = (canal_r < 13.0 * s && dy > canal_y - 3.0 * s)
            || ((7.0 * s..13.0 * s).contains(&ax) && dy > self.yv && dy < canal_y)
            || ((dy - canal_y).abs() < 5.0 * s && (8.0 * s..38.0 * s).contains(&ax))
            || (ax < 4.0 * s && dy > canal_y + 8.0 * s && dy < self.yv + 62.0 * s);
        if posterior {
            return (HU_CORTEX - 150.0, LABEL_BONE);
        }
        (HU_MUSCLE + 5.0, LABEL_SOFT)
    }

    /// What fills the chest cavity at (dx, dy) relative to the body centre.
    fn interior(&self, zc: &ZCtx, dx: f64, dy: f64) -> Interior {
        let s = self.s;
        let z = zc.z;
        if let Some([hx, hy, ha, hb]) = zc.heart {
            let q = ((dx - hx) / ha).powi(2) + ((dy - hy) / hb).powi(2);
            if q < 1.0 {
                return Interior::Soft(HU_BLOOD);
            }
            let qf = ((dx - hx) / (ha + 4.0 * s)).powi(2) + ((dy - hy) / (hb + 4.0 * s)).powi(2);
            if qf < 1.0 {
                return Interior::Soft(self.fat_hu);
            }
        }
        if let Some(d) = self.aorta_distance(zc, dx, dy) {
            if d < 0.0 {
                return Interior::Soft(HU_BLOOD);
            }
            if d < 3.0 * s {
                return Interior::Soft(self.fat_hu);
            }
        }
        let oe = (dx - 5.0 * s).powi(2) + (dy - (self.yv - 27.0 * s)).powi(2);
        if oe < (7.0 * s).powi(2) {
            return Interior::Soft(HU_SOFT);
        }
        if oe < (10.0 * s).powi(2) {
            return Interior::Soft(self.fat_hu);
        }
        if z < self.diaphragm(dx, dy) {
            if dx < 15.0 * s {
                return Interior::Soft(HU_LIVER);
            }
            if let Some([bx, by, ba, bb]) = zc.bubble {
                if ((dx - bx) / ba).powi(2) + ((dy - by) / bb).powi(2) < 1.0 {
                    return Interior::Soft(HU_AIR);
                }
            }
            return Interior::Soft(HU_SPLEEN);
        }
        if z > self.apex(dx, dy) {
            return Interior::Soft(if dx.abs() < 30.0 * s {
                HU_SOFT
            } else {
                self.fat_hu
            });
        }
        // Mediastinal fat between the lungs: narrow behind the sternum, wide around the trachea,
        // with a smooth transition.
        let t = ((dy - (self.yt - 60.0 * s)) / (30.0 * s)).clamp(0.0, 1.0);
        let column = 8.0 * s + 18.0 * s * t * t * (3.0 - 2.0 * t);
        if dx.abs() < column {
            return Interior::Soft(self.fat_hu);
        }
        Interior::Lung
    }

    /// Signed distance (mm, negative inside) to the aorta in this plane, if it is cut.
    fn aorta_distance(&self, zc: &ZCtx, dx: f64, dy: f64) -> Option<f64> {
        let s = self.s;
        let mut best: Option<f64> = None;
        let mut take = |d: f64| best = Some(best.map_or(d, |b: f64| b.min(d)));
        if zc.ascending {
            take(((dx + 8.0 * s).powi(2) + (dy - (self.yt - 35.0 * s)).powi(2)).sqrt() - 15.0 * s);
        }
        if zc.descending {
            take(((dx - 28.0 * s).powi(2) + (dy - (self.yv - 14.0 * s)).powi(2)).sqrt() - 12.0 * s);
        }
        if let Some(half) = zc.arch_half {
            let pts = [
                (-8.0 * s, self.yt - 35.0 * s),
                (4.0 * s, self.yt - 30.0 * s),
                (24.0 * s, self.yt - 12.0 * s),
                (28.0 * s, self.yv - 14.0 * s),
            ];
            for w in pts.windows(2) {
                take(segment_distance_2d((dx, dy), w[0], w[1]) - half);
            }
        }
        best
    }

    /// Height of the diaphragm under the point: two domes, the right one higher.
    fn diaphragm(&self, dx: f64, dy: f64) -> f64 {
        let s = self.s;
        let (sign, base, height) = if dx < 0.0 {
            (-1.0, self.z_ref - 178.0 * s, 48.0 * s)
        } else {
            (1.0, self.z_ref - 186.0 * s, 46.0 * s)
        };
        let q = ((dx - sign * 0.42 * self.a) / (0.5 * self.a)).powi(2)
            + ((dy + 0.05 * self.b) / (0.75 * self.b)).powi(2);
        base + height * (1.0 - q).max(0.0)
    }

    /// Height of the lung apex over the point: a dome, highest posteriorly.
    fn apex(&self, dx: f64, dy: f64) -> f64 {
        let s = self.s;
        let q = ((dx.abs() - 0.38 * self.a) / (0.5 * self.a)).powi(2)
            + ((dy - 0.1 * self.b) / (0.7 * self.b)).powi(2);
        self.z_ref + 92.0 * s - 70.0 * s * q
    }
}

/// Depth (mm) below the skin along the ray from the body centre, or `None` outside the body.
fn body_depth(zc: &ZCtx, dx: f64, dy: f64) -> Option<f64> {
    let un = dx / zc.a;
    let vn = dy / zc.b;
    let rho2 = un * un + vn * vn;
    if rho2 >= 1.0 {
        return None;
    }
    if rho2 < 1e-12 {
        return Some(zc.a.min(zc.b));
    }
    let r = (dx * dx + dy * dy).sqrt();
    Some(r * (1.0 / rho2.sqrt() - 1.0))
}

fn segment_distance_2d(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (abx, aby) = (b.0 - a.0, b.1 - a.1);
    let len2 = abx * abx + aby * aby;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * abx + (p.1 - a.1) * aby) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((p.0 - a.0 - t * abx).powi(2) + (p.1 - a.1 - t * aby).powi(2)).sqrt()
}
