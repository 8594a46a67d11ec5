//! Turns the analytic phantom into voxels: each slice is rendered on its own (rayon over slices)
//! as base anatomy, then vessels, airway walls and lumens, then nodules, each tube or sphere
//! visited only inside its bounding box; then a small Gaussian blur in-plane and across slices
//! (partial-volume effect) and Gaussian scanner noise, rounded to whole Hounsfield units.
//!
//! Determinism: every voxel's value depends only on the scene and the seed. The noise stream of
//! each image row is seeded from (seed, slice, row), so thread scheduling never changes a byte.

use super::anatomy::{Anatomy, LABEL_BONE, LABEL_LUNG, LABEL_SOFT};
use super::nodules::{PlacedNodule, Primitive};
use super::trees::Segment;
use super::Frame;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

const HU_VESSEL: f32 = 40.0;
const HU_WALL: f32 = 40.0;
const HU_LUMEN: f32 = -1000.0;
/// Lowest and highest value a 12-bit CT with intercept -1024 stores.
pub(crate) const HU_MIN: f32 = -1024.0;
pub(crate) const HU_MAX: f32 = 3071.0;
/// In-plane blur (pixels) and the weight of each neighbouring slice in the through-plane blur.
const BLUR_SIGMA_PX: f64 = 0.7;
const Z_WEIGHT: f32 = 0.15;

/// Everything one phantom's voxels depend on.
pub(crate) struct Scene<'a> {
    pub frame: &'a Frame,
    pub anatomy: &'a Anatomy,
    pub vessels: &'a [Segment],
    pub airways: &'a [Segment],
    pub nodules: &'a [PlacedNodule],
    pub noise_sd: f64,
    pub noise_seed: u64,
}

/// Renders the whole volume: `slices * rows * columns` HU values, slice-major.
pub(crate) fn render(scene: &Scene) -> Vec<f32> {
    let f = scene.frame;
    let plane = f.rows * f.columns;
    let vessel_index = index_segments(scene.vessels, f);
    let airway_index = index_segments(scene.airways, f);
    let mut data = vec![0f32; plane * f.slices];
    let kernel = gaussian_kernel(BLUR_SIGMA_PX);
    data.par_chunks_mut(plane).enumerate().for_each(|(i, out)| {
        render_slice(scene, i, out, &vessel_index[i], &airway_index[i], &kernel);
    });
    blur_z_and_add_noise(&mut data, f, scene.noise_sd, scene.noise_seed);
    data
}

/// For each slice, the segments whose tube reaches its plane.
fn index_segments(segments: &[Segment], f: &Frame) -> Vec<Vec<u32>> {
    let mut index = vec![Vec::new(); f.slices];
    for (id, seg) in segments.iter().enumerate() {
        let r = seg.outer();
        let lo = seg.a[2].min(seg.b[2]) - r;
        let hi = seg.a[2].max(seg.b[2]) + r;
        let first = ((lo - f.origin[2]) / f.step).ceil().max(0.0);
        let last = ((hi - f.origin[2]) / f.step).floor();
        if last < 0.0 || first > (f.slices - 1) as f64 {
            continue;
        }
        let last = last.min((f.slices - 1) as f64) as usize;
        for list in &mut index[first as usize..=last] {
            list.push(id as u32);
        }
    }
    index
}

/// Pixel bounds `(c0, c1, r0, r1)` (inclusive) of a patient-space box in the slice plane.
fn pixel_box(f: &Frame, lo: [f64; 2], hi: [f64; 2]) -> Option<(usize, usize, usize, usize)> {
    let c0 = ((lo[0] - f.origin[0]) / f.spacing).floor();
    let c1 = ((hi[0] - f.origin[0]) / f.spacing).ceil();
    let r0 = ((lo[1] - f.origin[1]) / f.spacing).floor();
    let r1 = ((hi[1] - f.origin[1]) / f.spacing).ceil();
    let (cols, rows) = ((f.columns - 1) as f64, (f.rows - 1) as f64);
    if c1 < 0.0 || r1 < 0.0 || c0 > cols || r0 > rows {
        return None;
    }
    Some((
        c0.max(0.0) as usize,
        c1.min(cols) as usize,
        r0.max(0.0) as usize,
        r1.min(rows) as usize,
    ))
}

/// In-plane bounds of a tube's part within `r` of the plane `z`.
fn tube_box(seg: &Segment, z: f64, r: f64) -> Option<([f64; 2], [f64; 2])> {
    let (az, bz) = (seg.a[2], seg.b[2]);
    if z < az.min(bz) - r || z > az.max(bz) + r {
        return None;
    }
    let (t0, t1) = if (bz - az).abs() < 1e-9 {
        (0.0, 1.0)
    } else {
        let ta = ((z - r - az) / (bz - az)).clamp(0.0, 1.0);
        let tb = ((z + r - az) / (bz - az)).clamp(0.0, 1.0);
        (ta.min(tb), ta.max(tb))
    };
    let at = |t: f64| {
        [
            seg.a[0] + t * (seg.b[0] - seg.a[0]),
            seg.a[1] + t * (seg.b[1] - seg.a[1]),
        ]
    };
    let (p, q) = (at(t0), at(t1));
    Some((
        [p[0].min(q[0]) - r, p[1].min(q[1]) - r],
        [p[0].max(q[0]) + r, p[1].max(q[1]) + r],
    ))
}

/// Fraction of a pixel of size `px` covered by a solid of radius `r` at distance `d`.
fn coverage(r: f64, d: f64, px: f64) -> f32 {
    ((r - d) / px + 0.5).clamp(0.0, 1.0) as f32
}

fn render_slice(
    scene: &Scene,
    i: usize,
    out: &mut [f32],
    vessels: &[u32],
    airways: &[u32],
    kernel: &[f32],
) {
    let f = scene.frame;
    let anatomy = scene.anatomy;
    let z = f.z(i);
    let zc = anatomy.zctx(z);
    let ribs = anatomy.rib_slice(&zc);
    let mut label = vec![0u8; out.len()];
    let xs: Vec<f64> = (0..f.columns).map(|c| f.x(c)).collect();
    for (r, (row, lab)) in out
        .chunks_mut(f.columns)
        .zip(label.chunks_mut(f.columns))
        .enumerate()
    {
        let y = f.y(r);
        for ((v, l), &x) in row.iter_mut().zip(lab.iter_mut()).zip(&xs) {
            (*v, *l) = anatomy.pixel(&zc, &ribs, x, y);
        }
    }
    let px = f.spacing;
    let tubes = |segments: &[Segment],
                 ids: &[u32],
                 pad: f64,
                 visit: &mut dyn FnMut(usize, f64, f64, &Segment)| {
        for &id in ids {
            let seg = &segments[id as usize];
            let Some((lo, hi)) = tube_box(seg, z, seg.outer() + pad) else {
                continue;
            };
            let Some((c0, c1, r0, r1)) = pixel_box(f, lo, hi) else {
                continue;
            };
            for r in r0..=r1 {
                let y = f.y(r);
                for (c, &x) in xs.iter().enumerate().take(c1 + 1).skip(c0) {
                    let (d, radius) = seg.distance([x, y, z]);
                    visit(r * f.columns + c, d, radius, seg);
                }
            }
        }
    };
    tubes(scene.vessels, vessels, px, &mut |k, d, radius, _| {
        if label[k] == LABEL_LUNG && d < radius + px {
            let v = out[k] + (HU_VESSEL - out[k]) * coverage(radius, d, px);
            out[k] = out[k].max(v);
        }
    });
    let airway_ok = |l: u8| l == LABEL_LUNG || l == LABEL_SOFT;
    tubes(scene.airways, airways, px, &mut |k, d, radius, seg| {
        let outer = radius + seg.wall;
        if airway_ok(label[k]) && d < outer + px {
            let v = out[k] + (HU_WALL - out[k]) * coverage(outer, d, px);
            out[k] = out[k].max(v);
        }
    });
    tubes(scene.airways, airways, px, &mut |k, d, radius, _| {
        if airway_ok(label[k]) && d < radius + px {
            let v = out[k] + (HU_LUMEN - out[k]) * coverage(radius, d, px);
            out[k] = out[k].min(v);
        }
    });
    for nodule in scene.nodules {
        for prim in &nodule.primitives {
            draw_primitive(f, prim, z, &xs, out, &label);
        }
    }
    blur_plane(out, f.rows, f.columns, kernel);
}

fn draw_primitive(f: &Frame, prim: &Primitive, z: f64, xs: &[f64], out: &mut [f32], label: &[u8]) {
    let px = f.spacing;
    let (lo, hi) = prim.bounds();
    if z < lo[2] - px || z > hi[2] + px {
        return;
    }
    let Some((c0, c1, r0, r1)) = pixel_box(f, [lo[0] - px, lo[1] - px], [hi[0] + px, hi[1] + px])
    else {
        return;
    };
    let hu = prim.hu();
    for r in r0..=r1 {
        let y = f.y(r);
        for (c, &x) in xs.iter().enumerate().take(c1 + 1).skip(c0) {
            let k = r * f.columns + c;
            if label[k] == LABEL_BONE {
                continue;
            }
            let (d, radius) = prim.distance([x, y, z]);
            if d < radius + px {
                let v = out[k] + (hu - out[k]) * coverage(radius, d, px);
                out[k] = out[k].max(v);
            }
        }
    }
}

fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let w: Vec<f64> = (-2i32..=2)
        .map(|k| (-(f64::from(k * k)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| (v / sum) as f32).collect()
}

/// Separable 5-tap blur of one plane (edges clamped).
fn blur_plane(data: &mut [f32], rows: usize, cols: usize, kernel: &[f32]) {
    let mut tmp = vec![0f32; data.len()];
    let half = kernel.len() / 2;
    for r in 0..rows {
        let row = &data[r * cols..(r + 1) * cols];
        let out = &mut tmp[r * cols..(r + 1) * cols];
        for (c, o) in out.iter_mut().enumerate() {
            let mut acc = 0.0;
            for (k, w) in kernel.iter().enumerate() {
                let cc = (c + k).saturating_sub(half).min(cols - 1);
                acc += w * row[cc];
            }
            *o = acc;
        }
    }
    for r in 0..rows {
        let out = &mut data[r * cols..(r + 1) * cols];
        out.fill(0.0);
        for (k, w) in kernel.iter().enumerate() {
            let rr = (r + k).saturating_sub(half).min(rows - 1);
            let src = &tmp[rr * cols..(rr + 1) * cols];
            for (o, s) in out.iter_mut().zip(src) {
                *o += w * s;
            }
        }
    }
}

/// Through-plane blur `[w, 1-2w, w]` (edges clamped), then noise, then whole HU within the
/// stored range. Slices go in order with the original of the previous slice kept aside; rows of
/// a slice run in parallel, each with its own noise stream.
fn blur_z_and_add_noise(data: &mut [f32], f: &Frame, sd: f64, seed: u64) {
    let plane = f.rows * f.columns;
    let sd = sd as f32;
    let mut prev: Vec<f32> = data[..plane].to_vec();
    let mut cur_orig: Vec<f32> = vec![0.0; plane];
    for i in 0..f.slices {
        cur_orig.copy_from_slice(&data[i * plane..(i + 1) * plane]);
        let (head, tail) = data.split_at_mut((i + 1) * plane);
        let cur = &mut head[i * plane..];
        let next: &[f32] = if i + 1 < f.slices {
            &tail[..plane]
        } else {
            &cur_orig
        };
        cur.par_chunks_mut(f.columns)
            .zip(cur_orig.par_chunks(f.columns))
            .zip(prev.par_chunks(f.columns))
            .zip(next.par_chunks(f.columns))
            .enumerate()
            .for_each(|(r, (((out, c), p), n))| {
                let mut rng = ChaCha8Rng::seed_from_u64(row_seed(seed, i, r));
                for k in 0..out.len() {
                    let v = (1.0 - 2.0 * Z_WEIGHT) * c[k] + Z_WEIGHT * (p[k] + n[k]);
                    let noise: f32 = StandardNormal.sample(&mut rng);
                    out[k] = (v + sd * noise).round().clamp(HU_MIN, HU_MAX);
                }
            });
        std::mem::swap(&mut prev, &mut cur_orig);
    }
}

fn row_seed(seed: u64, slice: usize, row: usize) -> u64 {
    splitmix(seed ^ splitmix(((slice as u64) << 32) | row as u64))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
