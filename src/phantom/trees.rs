//! Branching tubes: the pulmonary vessel trees (soft-tissue tubes of shrinking radius, the main
//! source of false-positive "nodules") and the airway tree (air tubes with a soft-tissue wall).
//!
//! Trees are grown once per phantom as lists of tapered segments ([`Segment`]); the rasteriser
//! only visits each segment's bounding box, so thousands of branches stay cheap.

use super::anatomy::Anatomy;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::VecDeque;

/// A tapered tube from `a` (radius `ra`) to `b` (radius `rb`), in patient mm. Airways also have a
/// wall of thickness `wall` around the lumen; vessels have `wall == 0`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segment {
    pub a: [f64; 3],
    pub b: [f64; 3],
    pub ra: f64,
    pub rb: f64,
    pub wall: f64,
}

impl Segment {
    /// Largest outer radius (lumen plus wall).
    pub(crate) fn outer(&self) -> f64 {
        self.ra.max(self.rb) + self.wall
    }

    /// Distance from `p` to the centre line and the lumen radius at the closest point.
    pub(crate) fn distance(&self, p: [f64; 3]) -> (f64, f64) {
        let ab = sub(self.b, self.a);
        let len2 = dot(ab, ab);
        let t = if len2 > 0.0 {
            (dot(sub(p, self.a), ab) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let closest = add(self.a, scale(ab, t));
        (norm(sub(p, closest)), self.ra + t * (self.rb - self.ra))
    }
}

struct Tip {
    p: [f64; 3],
    dir: [f64; 3],
    r: f64,
    generation: u32,
    /// The lung region this branch heads for: keeps trees spreading to the periphery.
    target: [f64; 3],
}

/// Rules for growing one tree.
struct Growth {
    /// Segment length as a multiple of its radius.
    length: (f64, f64),
    /// Radius ratio of the continuing branch and of the side branch.
    main_ratio: (f64, f64),
    side_ratio: (f64, f64),
    /// Stop below this radius (mm) or beyond this many generations or segments.
    min_radius: f64,
    max_generation: u32,
    max_segments: usize,
    /// Wall thickness as `fraction * r + constant` (0 for vessels).
    wall: (f64, f64),
}

/// Arterial and venous trees of both lungs.
pub(crate) fn vessels(anatomy: &Anatomy, pixel: f64, rng: &mut ChaCha8Rng) -> Vec<Segment> {
    let s = anatomy.s;
    let growth = Growth {
        length: (8.0, 14.0),
        main_ratio: (0.8, 0.92),
        side_ratio: (0.55, 0.75),
        min_radius: (0.45 * pixel).max(0.3),
        max_generation: 40,
        max_segments: 1500,
        wall: (0.0, 0.0),
    };
    let mut out = Vec::new();
    for side in 0..2 {
        for (k, hilum) in anatomy.hila(side).into_iter().enumerate() {
            let root_r = if k == 0 { 4.0 * s } else { 3.6 * s };
            let roots = root_tips(anatomy, hilum, root_r, 8, rng, &mut out, 0.0);
            grow(anatomy, roots, &growth, rng, &mut out);
        }
    }
    out
}

/// Trachea, main bronchi and the bronchial tree down to ~1 mm lumens.
pub(crate) fn airways(
    anatomy: &Anatomy,
    top_z: f64,
    pixel: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<Segment> {
    let s = anatomy.s;
    let wall = |r: f64| 0.15 * r + 0.25 * s;
    let carina = [anatomy.cx, anatomy.cy + anatomy.yt, anatomy.z_ref];
    let trachea_r = 8.5 * s;
    let mut out = vec![Segment {
        a: [carina[0], carina[1], top_z.max(carina[2]) + 20.0 * s],
        b: carina,
        ra: trachea_r,
        rb: trachea_r,
        wall: 2.0 * s,
    }];
    let growth = Growth {
        length: (5.0, 8.0),
        main_ratio: (0.75, 0.85),
        side_ratio: (0.6, 0.75),
        min_radius: (0.6 * pixel).max(0.6 * s),
        max_generation: 7,
        max_segments: 300,
        wall: (0.15, 0.25 * s),
    };
    for side in 0..2 {
        let (end, r) = if side == 0 {
            (
                [
                    carina[0] - 25.0 * s,
                    carina[1] + 2.0 * s,
                    carina[2] - 22.0 * s,
                ],
                6.5 * s,
            )
        } else {
            (
                [
                    carina[0] + 42.0 * s,
                    carina[1] + 5.0 * s,
                    carina[2] - 30.0 * s,
                ],
                5.5 * s,
            )
        };
        out.push(Segment {
            a: carina,
            b: end,
            ra: r,
            rb: r * 0.9,
            wall: wall(r),
        });
        let roots = root_tips(anatomy, end, 4.5 * s, 3, rng, &mut out, 0.15);
        grow(anatomy, roots, &growth, rng, &mut out);
    }
    out
}

/// Connects a hilum to `count` random targets inside the same lung: each root runs from the hilum
/// to the first point inside the lung (these stubs go into `out`) and becomes a growing tip.
fn root_tips(
    anatomy: &Anatomy,
    hilum: [f64; 3],
    r: f64,
    count: usize,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Segment>,
    wall_fraction: f64,
) -> Vec<Tip> {
    let s = anatomy.s;
    let right = hilum[0] < anatomy.cx;
    let (z_lo, z_hi) = anatomy.lung_z_range();
    let mut tips = Vec::new();
    let mut attempts = 0;
    while tips.len() < count && attempts < 400 {
        attempts += 1;
        let x = if right {
            anatomy.cx - rng.random_range(0.15..0.9) * anatomy.a
        } else {
            anatomy.cx + rng.random_range(0.15..0.9) * anatomy.a
        };
        let target = [
            x,
            anatomy.cy + rng.random_range(-0.9..0.9) * anatomy.b,
            rng.random_range(z_lo..z_hi),
        ];
        if !anatomy.in_lung(target[0], target[1], target[2]) {
            continue;
        }
        let dir = normalise(sub(target, hilum));
        let dist = norm(sub(target, hilum));
        // March from the hilum until the tube is inside the lung.
        let mut t = 0.0;
        let step = 1.0 * s;
        while t < dist
            && !anatomy.in_lung(
                hilum[0] + dir[0] * t,
                hilum[1] + dir[1] * t,
                hilum[2] + dir[2] * t,
            )
        {
            t += step;
        }
        if t >= dist {
            continue;
        }
        let entry = add(hilum, scale(dir, t + r));
        out.push(Segment {
            a: hilum,
            b: entry,
            ra: r,
            rb: r,
            wall: wall_fraction * r + if wall_fraction > 0.0 { 0.25 * s } else { 0.0 },
        });
        tips.push(Tip {
            p: entry,
            dir,
            r,
            generation: 0,
            target,
        });
    }
    tips
}

fn grow(
    anatomy: &Anatomy,
    roots: Vec<Tip>,
    g: &Growth,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Segment>,
) {
    let mut queue: VecDeque<Tip> = roots.into();
    let mut made = 0usize;
    while let Some(tip) = queue.pop_front() {
        if made >= g.max_segments || tip.r < g.min_radius || tip.generation > g.max_generation {
            continue;
        }
        let Some((end, dir)) = extend(anatomy, &tip, g, rng) else {
            continue;
        };
        let rb = tip.r * 0.95;
        out.push(Segment {
            a: tip.p,
            b: end,
            ra: tip.r,
            rb,
            wall: g.wall.0 * tip.r + g.wall.1,
        });
        made += 1;
        let main_r = rb * rng.random_range(g.main_ratio.0..g.main_ratio.1);
        let side_r = rb * rng.random_range(g.side_ratio.0..g.side_ratio.1);
        // The main branch keeps heading for the tip's target (a new one once reached); the side
        // branch gets its own target further out, so the tree fans out over the whole lung.
        let main_target = if norm(sub(tip.target, end)) < 3.0 * tip.r + 5.0 {
            lung_target(anatomy, end, rng).unwrap_or(tip.target)
        } else {
            tip.target
        };
        let side_target = lung_target(anatomy, end, rng).unwrap_or(tip.target);
        let main_dir = steer(
            rotate_random(dir, rng.random_range(5f64..20.0).to_radians(), rng),
            end,
            main_target,
        );
        let side_dir = steer(
            rotate_random(dir, rng.random_range(35f64..65.0).to_radians(), rng),
            end,
            side_target,
        );
        for (r, d, target) in [
            (main_r, main_dir, main_target),
            (side_r, side_dir, side_target),
        ] {
            queue.push_back(Tip {
                p: end,
                dir: d,
                r,
                generation: tip.generation + 1,
                target,
            });
        }
    }
}

/// Blends a branch direction towards its target.
fn steer(dir: [f64; 3], from: [f64; 3], target: [f64; 3]) -> [f64; 3] {
    normalise(add(
        scale(dir, 0.65),
        scale(normalise(sub(target, from)), 0.35),
    ))
}

/// A random lung point within ~60 mm (scaled) of `near`, preferring points farther from the body
/// centre line than `near` (branches run outwards, from hilum to pleura).
fn lung_target(anatomy: &Anatomy, near: [f64; 3], rng: &mut ChaCha8Rng) -> Option<[f64; 3]> {
    let reach = 60.0 * anatomy.s;
    for _ in 0..20 {
        let p = add(
            near,
            scale(random_unit(rng), reach * rng.random_range(0.3..1.0)),
        );
        if (p[0] - anatomy.cx).abs() + 5.0 * anatomy.s < (near[0] - anatomy.cx).abs() {
            continue;
        }
        if anatomy.in_lung(p[0], p[1], p[2]) {
            return Some(p);
        }
    }
    None
}

/// A segment from the tip that stays inside the lung, trying a few directions and lengths.
fn extend(
    anatomy: &Anatomy,
    tip: &Tip,
    g: &Growth,
    rng: &mut ChaCha8Rng,
) -> Option<([f64; 3], [f64; 3])> {
    let length = tip.r * rng.random_range(g.length.0..g.length.1) + 1.5 * anatomy.s.min(1.0);
    for attempt in 0..6 {
        let dir = if attempt == 0 {
            tip.dir
        } else {
            rotate_random(tip.dir, (15.0 * attempt as f64).to_radians(), rng)
        };
        for shrink in [1.0, 0.5] {
            let l = length * shrink;
            let end = add(tip.p, scale(dir, l));
            let mid = add(tip.p, scale(dir, l * 0.5));
            let ahead = add(tip.p, scale(dir, l + tip.r));
            if anatomy.in_lung(end[0], end[1], end[2])
                && anatomy.in_lung(mid[0], mid[1], mid[2])
                && anatomy.in_lung(ahead[0], ahead[1], ahead[2])
            {
                return Some((end, dir));
            }
        }
    }
    None
}

/// `dir` turned by `angle` about a random axis perpendicular to it.
fn rotate_random(dir: [f64; 3], angle: f64, rng: &mut ChaCha8Rng) -> [f64; 3] {
    let random: [f64; 3] = [
        StandardNormal.sample(rng),
        StandardNormal.sample(rng),
        StandardNormal.sample(rng),
    ];
    let mut perp = sub(random, scale(dir, dot(random, dir)));
    if norm(perp) < 1e-9 {
        perp = if dir[0].abs() < 0.9 {
            [1.0, 0.0, 0.0]
        } else {
            [0.0, 1.0, 0.0]
        };
        perp = sub(perp, scale(dir, dot(perp, dir)));
    }
    let perp = normalise(perp);
    normalise(add(scale(dir, angle.cos()), scale(perp, angle.sin())))
}

pub(crate) fn add(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn scale(a: [f64; 3], k: f64) -> [f64; 3] {
    [a[0] * k, a[1] * k, a[2] * k]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

pub(crate) fn normalise(a: [f64; 3]) -> [f64; 3] {
    let n = norm(a);
    if n > 0.0 {
        scale(a, 1.0 / n)
    } else {
        [0.0, 0.0, 1.0]
    }
}

/// A random unit vector.
pub(crate) fn random_unit(rng: &mut ChaCha8Rng) -> [f64; 3] {
    let v: [f64; 3] = [
        StandardNormal.sample(rng),
        StandardNormal.sample(rng),
        StandardNormal.sample(rng),
    ];
    normalise(v)
}
