//! Per-series cache of the segmentation step, so that evaluating other classifiers on the same data
//! skips the slow U-Net.
//!
//! An entry holds the grouped components ([`Segmented`]) of one series as JSON, in
//! `CACHE_DIR/<SeriesInstanceUID>-<key>.json`. The key is a SHA-256 over everything the groups
//! depend on: the cache format version, the segmentation model's SHA-256, the `exact` option and
//! the volume itself (shape, geometry and every HU value), so a changed model, option or image can
//! never be served stale groups. A corrupt or unreadable entry is a miss (and is rewritten).

use crate::pipeline::group::Group;
use crate::pipeline::{PipelineOptions, Segmented};
use crate::volume::Volume;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bump when grouping or the entry format changes meaning (3: default segmentation on lung-region
/// tiles).
pub const CACHE_VERSION: u32 = 3;

/// A cache write that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the segmentation cache {path}: {error}")]
pub struct CacheError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    version: u32,
    series_uid: String,
    key: String,
    segment_s: f64,
    group_s: f64,
    groups: Vec<CachedGroup>,
    /// Flat indices of the thresholded segmentation's voxels (see [`Segmented::mask_voxels`]).
    mask_voxels: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedGroup {
    center_irc: [f64; 3],
    voxels: usize,
    segmented_voxels: usize,
}

/// A segmentation cache in one folder.
#[derive(Debug, Clone)]
pub struct SegmentationCache {
    dir: PathBuf,
}

/// The cache key of `volume` segmented by the model with SHA-256 `model_sha256` with `options`
/// (exactness and segmentation regions change the segmentation).
pub fn key(volume: &Volume, model_sha256: &str, options: &PipelineOptions) -> String {
    let mut h = Sha256::new();
    h.update(CACHE_VERSION.to_le_bytes());
    h.update(model_sha256.as_bytes());
    h.update([u8::from(options.exact)]);
    // Where the U-Net ran: a different segmentation.
    h.update(format!("{:?}", options.regions).as_bytes());
    h.update(volume.series.series_uid.as_bytes());
    for n in volume.shape() {
        h.update((n as u64).to_le_bytes());
    }
    let g = &volume.geometry;
    for v in g
        .origin_xyz
        .iter()
        .chain(&g.spacing_xyz)
        .chain(&g.direction_flat())
    {
        h.update(v.to_le_bytes());
    }
    // Slice by slice through a byte buffer (hashing 4 bytes at a time is several times slower).
    let mut buffer = Vec::new();
    for slice in volume.hu.outer_iter() {
        buffer.clear();
        for v in slice.iter() {
            buffer.extend_from_slice(&v.to_le_bytes());
        }
        h.update(&buffer);
    }
    format!("{:x}", h.finalize())
}

impl SegmentationCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> SegmentationCache {
        SegmentationCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, series_uid: &str, key: &str) -> PathBuf {
        // UIDs are digits and dots; anything else is replaced so a name can never leave the folder.
        let safe: String = series_uid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir
            .join(format!("{safe}-{}.json", &key[..16.min(key.len())]))
    }

    /// The cached groups of `series_uid` under `key`, if present and intact (timings are zero).
    pub fn get(&self, series_uid: &str, key: &str) -> Option<Segmented> {
        let path = self.path(series_uid, key);
        let text = std::fs::read_to_string(&path).ok()?;
        let entry: Entry = match serde_json::from_str(&text) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "ignoring a corrupt cache entry");
                return None;
            }
        };
        if entry.version != CACHE_VERSION || entry.key != key || entry.series_uid != series_uid {
            return None;
        }
        Some(Segmented {
            groups: entry
                .groups
                .into_iter()
                .map(|g| Group {
                    center_irc: g.center_irc,
                    voxels: g.voxels,
                    segmented_voxels: g.segmented_voxels,
                })
                .collect(),
            mask_voxels: entry.mask_voxels,
            segment_s: 0.0,
            group_s: 0.0,
            lung: None,
        })
    }

    /// Stores `segmented` for `series_uid` under `key` (written to a temporary file, then renamed,
    /// so a concurrent reader never sees half an entry).
    pub fn put(
        &self,
        series_uid: &str,
        key: &str,
        segmented: &Segmented,
    ) -> Result<(), CacheError> {
        let path = self.path(series_uid, key);
        let io = |error| CacheError {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let entry = Entry {
            version: CACHE_VERSION,
            series_uid: series_uid.to_string(),
            key: key.to_string(),
            segment_s: segmented.segment_s,
            group_s: segmented.group_s,
            mask_voxels: segmented.mask_voxels.clone(),
            groups: segmented
                .groups
                .iter()
                .map(|g| CachedGroup {
                    center_irc: g.center_irc,
                    voxels: g.voxels,
                    segmented_voxels: g.segmented_voxels,
                })
                .collect(),
        };
        let text = serde_json::to_string(&entry).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    fn volume(value: f32) -> Volume {
        let mut v = Volume {
            hu: ndarray::Array3::from_elem((3, 4, 4), -1000.0f32),
            geometry: Geometry::axial([0.0; 3], [1.0, 1.0, 2.0]),
            series: Default::default(),
        };
        v.hu[[1, 2, 2]] = value;
        v.series.series_uid = "1.2.3".into();
        v
    }

    #[test]
    fn entries_round_trip_and_keys_follow_the_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SegmentationCache::new(dir.path().join("cache"));
        let v = volume(40.0);
        let default = PipelineOptions::default();
        let exact = PipelineOptions {
            exact: true,
            ..default
        };
        let body = PipelineOptions {
            regions: crate::pipeline::segment::SegmentRegions::Body,
            ..default
        };
        let k = key(&v, "abc", &default);
        assert_eq!(k, key(&volume(40.0), "abc", &default));
        assert_ne!(k, key(&volume(41.0), "abc", &default));
        assert_ne!(k, key(&v, "abd", &default));
        assert_ne!(k, key(&v, "abc", &exact));
        assert_ne!(k, key(&v, "abc", &body));
        assert!(cache.get("1.2.3", &k).is_none());
        let s = Segmented {
            groups: vec![Group {
                center_irc: [1.0, 2.5, 2.0],
                voxels: 3,
                segmented_voxels: 9,
            }],
            mask_voxels: vec![4, 5],
            segment_s: 1.5,
            group_s: 0.1,
            lung: None,
        };
        cache.put("1.2.3", &k, &s).unwrap();
        let got = cache.get("1.2.3", &k).unwrap();
        assert_eq!(got.groups, s.groups);
        assert_eq!(got.segment_s, 0.0);
        assert!(cache
            .get("1.2.3", &key(&volume(41.0), "abc", &default))
            .is_none());
        // A corrupt entry is a miss.
        let path = cache.path("1.2.3", &k);
        std::fs::write(&path, "{not json").unwrap();
        assert!(cache.get("1.2.3", &k).is_none());
    }
}
