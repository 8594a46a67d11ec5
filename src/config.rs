//! Configuration: one TOML file, loaded once into a validated [`Config`].
//!
//! Every key has a default (the documented example is `config/noduled.toml`), so an empty file is a
//! valid configuration. Validation reports *all* problems at once — unknown keys, wrong types and
//! out-of-range values — because an operator fixing a file one error per restart is a bad afternoon.
//! The schema is the [`Default`] value itself: any key it serialises is known, with its type.

use crate::dicom::SeriesRules;
use crate::pipeline::CaveatPolicies;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub series: SeriesRules,
    pub pipeline: PipelineConfig,
    pub server: ServerConfig,
    /// `[caveats]`: refuse or analyse-with-caveat, per caveat (see `pipeline::caveats`).
    pub caveats: CaveatPolicies,
}

/// `[log]`: where and how much to log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (human on a terminal, JSON otherwise), `human` or `json`.
    pub format: String,
    /// A `tracing` filter such as `info` or `noduled=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "auto".into(),
            level: "info".into(),
        }
    }
}

/// `[pipeline]`: models and compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Folder of the default models (relative paths are taken from the working directory).
    pub models_dir: PathBuf,
    /// Segmentation U-Net file name inside `models_dir`, or an absolute path.
    pub segmentation_model: PathBuf,
    /// Nodule classifier file name inside `models_dir`, or an absolute path.
    pub nodule_model: PathBuf,
    /// Malignancy model file name inside `models_dir`, an absolute path, or `diameter` (the book's
    /// diameter baseline). The default file falls back to the baseline while it does not exist.
    pub malignancy_model: String,
    /// Worker threads for inference; 0 means all cores.
    pub threads: usize,
    /// Inference engine: `tract` (built in), `ort` / `ort-cuda` (onnxruntime, builds with
    /// `--features ort` / `--features cuda`).
    pub engine: String,
    /// Where the U-Net runs outside `--exact`: `lung` (tiles around the lungs, the default),
    /// `body` (tiles around the body) or `whole` (every pixel). See `pipeline::segment`.
    pub segment_regions: crate::pipeline::segment::SegmentRegions,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            models_dir: PathBuf::from("models"),
            segmentation_model: PathBuf::from("segmentation.onnx"),
            nodule_model: PathBuf::from("nodule.onnx"),
            malignancy_model: "malignancy.onnx".into(),
            threads: 0,
            engine: "tract".into(),
            segment_regions: Default::default(),
        }
    }
}

/// `[server]`: the DICOM service (`noduled serve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Our AE title; associations calling another title are rejected.
    pub ae_title: String,
    /// Address to listen on. Loopback unless you mean to accept the network.
    pub bind: String,
    pub port: u16,
    /// Calling AE titles allowed to associate, as `AE` or `AE@host`; empty allows any (then rely
    /// on `bind`/the firewall).
    pub allowed_calling_aes: Vec<String>,
    /// Peers we send to (C-MOVE destinations, auto-forward), as `AE@host:port`.
    pub destinations: Vec<String>,
    /// AE titles from `destinations` that receive every new report automatically.
    pub forward_reports_to: Vec<String>,
    /// Where the index and the spool live.
    pub state_dir: PathBuf,
    /// A series is complete this many seconds after its last instance (and no association is
    /// still sending to it).
    pub completion_seconds: f64,
    /// Concurrent associations; more are refused at connect.
    pub max_associations: usize,
    /// Largest PDU we accept, in bytes.
    pub max_pdu_bytes: u32,
    /// Largest single instance we accept, in MB (larger: status 0xA700).
    pub max_instance_mb: u64,
    /// Largest series, in instances (more: refused with a recorded reason).
    pub max_series_instances: u64,
    /// Refuse new instances (0xA700) when free space falls below this many MB.
    pub min_free_disk_mb: u64,
    /// Seconds to wait for the association request, and for the release.
    pub artim_seconds: f64,
    /// Seconds to wait for the next PDU in the middle of a message.
    pub dimse_timeout_seconds: f64,
    /// Seconds an association may sit idle between messages.
    pub idle_timeout_seconds: f64,
    /// Analysis workers (each holds one CT in memory).
    pub workers: usize,
    /// On SIGTERM, seconds open associations get to finish.
    pub shutdown_grace_seconds: f64,
    /// `host:port` of the HTTP endpoint (`/healthz`, `/metrics`, `/status`); empty disables it.
    pub http: String,
    /// A folder watched for DICOM files to ingest; empty disables it.
    pub drop_folder: PathBuf,
    /// Source images of analysed series are deleted after this many days; 0 keeps them.
    pub retention_days: f64,
    /// Also store a key image per finding (DICOM Secondary Capture in the CT's study), retrievable
    /// like the SR, for PACS viewers that do not display SRs.
    pub key_images: bool,
    /// `[server.tls]`: DICOM TLS on the DICOM port; off while no certificate is configured.
    pub tls: TlsConfig,
}

/// `[server.tls]`: DICOM TLS (PS3.15 B.9, BCP 195) for the DICOM port. Empty paths mean unset;
/// relative paths are taken from the working directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Our certificate chain (PEM, leaf first). Set: the DICOM port speaks TLS only.
    pub certificate: PathBuf,
    /// The private key of `certificate` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// CA certificates (PEM) that sign client certificates. Set: every peer must present a
    /// certificate signed by one of them (mutual TLS); empty: peers need no certificate.
    pub client_ca: PathBuf,
}

impl TlsConfig {
    /// Whether TLS is configured (a certificate is set).
    pub fn enabled(&self) -> bool {
        !self.certificate.as_os_str().is_empty()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ae_title: "NODULED".into(),
            bind: "127.0.0.1".into(),
            port: 11112,
            allowed_calling_aes: Vec::new(),
            destinations: Vec::new(),
            forward_reports_to: Vec::new(),
            state_dir: PathBuf::from("/var/lib/noduled"),
            completion_seconds: 10.0,
            max_associations: 16,
            max_pdu_bytes: 65536,
            max_instance_mb: 64,
            max_series_instances: 2000,
            min_free_disk_mb: 1024,
            artim_seconds: 30.0,
            dimse_timeout_seconds: 60.0,
            idle_timeout_seconds: 300.0,
            workers: 1,
            shutdown_grace_seconds: 30.0,
            http: "127.0.0.1:8080".into(),
            drop_folder: PathBuf::new(),
            retention_days: 0.0,
            key_images: false,
            tls: TlsConfig::default(),
        }
    }
}

/// A peer we send to, parsed from `AE@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// Parses `AE@host:port`.
    pub fn parse(text: &str) -> Result<Destination, String> {
        let (ae, address) = text
            .split_once('@')
            .ok_or_else(|| format!("destination {text:?} is not AE@host:port"))?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("destination {text:?} has no :port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("destination {text:?} has a bad port"))?;
        check_ae_title(ae)?;
        if host.is_empty() {
            return Err(format!("destination {text:?} has no host"));
        }
        Ok(Destination {
            ae_title: ae.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// `AE@host:port`, the form dicom-ul connects to.
    pub fn address(&self) -> String {
        format!("{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// An allowed calling AE, parsed from `AE` or `AE@host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPeer {
    pub ae_title: String,
    pub host: Option<String>,
}

impl AllowedPeer {
    pub fn parse(text: &str) -> Result<AllowedPeer, String> {
        let (ae, host) = match text.split_once('@') {
            Some((ae, host)) => (ae, Some(host.to_string())),
            None => (text, None),
        };
        check_ae_title(ae)?;
        Ok(AllowedPeer {
            ae_title: ae.to_string(),
            host,
        })
    }
}

/// AE titles: 1-16 characters of the default repertoire, no backslash, not all spaces.
pub fn check_ae_title(ae: &str) -> Result<(), String> {
    if ae.trim().is_empty()
        || ae.len() > 16
        || ae
            .chars()
            .any(|c| c.is_control() || c == '\\' || !c.is_ascii())
    {
        return Err(format!(
            "{ae:?} is not a valid AE title (1-16 ASCII characters, no backslash)"
        ));
    }
    Ok(())
}

impl ServerConfig {
    /// The destinations table, parsed.
    pub fn destinations(&self) -> Vec<Destination> {
        self.destinations
            .iter()
            .filter_map(|d| Destination::parse(d).ok())
            .collect()
    }

    /// The allow-list, parsed.
    pub fn allowed_peers(&self) -> Vec<AllowedPeer> {
        self.allowed_calling_aes
            .iter()
            .filter_map(|p| AllowedPeer::parse(p).ok())
            .collect()
    }

    fn check(&self, problems: &mut Vec<String>) {
        if let Err(e) = check_ae_title(&self.ae_title) {
            problems.push(format!("server.ae_title: {e}"));
        }
        for d in &self.destinations {
            if let Err(e) = Destination::parse(d) {
                problems.push(format!("server.destinations: {e}"));
            }
        }
        for p in &self.allowed_calling_aes {
            if let Err(e) = AllowedPeer::parse(p) {
                problems.push(format!("server.allowed_calling_aes: {e}"));
            }
        }
        let known: Vec<String> = self
            .destinations()
            .into_iter()
            .map(|d| d.ae_title)
            .collect();
        for f in &self.forward_reports_to {
            if !known.contains(f) {
                problems.push(format!(
                    "server.forward_reports_to: {f:?} is not in server.destinations"
                ));
            }
        }
        for (name, value) in [
            ("completion_seconds", self.completion_seconds),
            ("artim_seconds", self.artim_seconds),
            ("dimse_timeout_seconds", self.dimse_timeout_seconds),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
            ("shutdown_grace_seconds", self.shutdown_grace_seconds),
            ("retention_days", self.retention_days),
        ] {
            if !value.is_finite() || value < 0.0 {
                problems.push(format!("server.{name} must be a non-negative number"));
            }
        }
        if self.max_associations == 0 {
            problems.push("server.max_associations must be at least 1".into());
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.max_pdu_bytes) {
            problems.push("server.max_pdu_bytes must be between 4096 and 16777216".into());
        }
        if self.max_instance_mb == 0 || self.max_series_instances == 0 {
            problems
                .push("server.max_instance_mb and max_series_instances must be at least 1".into());
        }
        if !self.http.is_empty() && self.http.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("server.http {:?} is not host:port", self.http));
        }
        // The files are read here too, so `check-config` and the start of `serve` name a missing
        // or bad certificate or key instead of every TLS handshake failing later.
        if let Err(e) = crate::server::tls::server_config(&self.tls) {
            problems.push(e);
        }
    }
}

/// A configuration that could not be used; `problems` holds every one found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {} problem(s): {}", .problems.len(), .problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses and validates TOML text; on failure returns every problem found.
    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| vec![one_line(&e.to_string())])?;
        let schema = toml::Table::try_from(Config::default()).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let mut table = table;
        // Bad keys are recorded and dropped so the remaining values still get their range checks.
        compare("", &mut table, &schema, &mut problems);
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| vec![one_line(&e.to_string())])?;
        config.check_ranges(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    fn check_ranges(&self, problems: &mut Vec<String>) {
        if !["auto", "human", "json"].contains(&self.log.format.as_str()) {
            problems.push(format!(
                "log.format must be auto, human or json, not {:?}",
                self.log.format
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level {:?} is not a valid filter",
                self.log.level
            ));
        }
        let s = &self.series;
        if s.min_slices < 7 {
            problems.push(format!(
                "series.min_slices must be at least 7 (the U-Net's context), not {}",
                s.min_slices
            ));
        }
        if s.max_slices < s.min_slices {
            problems.push("series.max_slices must not be below series.min_slices".into());
        }
        if s.max_gap_factor.is_nan() || s.max_gap_factor <= 1.0 {
            problems.push(format!(
                "series.max_gap_factor must be above 1, not {}",
                s.max_gap_factor
            ));
        }
        if s.warn_thickness_mm.is_nan() || s.warn_thickness_mm <= 0.0 {
            problems.push("series.warn_thickness_mm must be positive".into());
        }
        if !(0.0..=90.0).contains(&s.max_axial_angle_deg) {
            problems.push("series.max_axial_angle_deg must be between 0 and 90".into());
        }
        if s.uneven_step_fraction.is_nan() || s.uneven_step_fraction < 0.0 {
            problems.push("series.uneven_step_fraction must not be negative".into());
        }
        self.server.check(problems);
        let engines = crate::engine::available_engines();
        if !engines.contains(&self.pipeline.engine.as_str()) {
            problems.push(format!(
                "pipeline.engine {:?} is not available in this build (it has {})",
                self.pipeline.engine,
                engines.join(", ")
            ));
        }
        if self.pipeline.malignancy_model.trim().is_empty() {
            problems.push("pipeline.malignancy_model must be `diameter` or a model file".into());
        }
    }

    /// A model path from the configuration, resolved against `models_dir` unless absolute.
    pub fn model_path(&self, file: &Path) -> PathBuf {
        if file.is_absolute() {
            file.to_path_buf()
        } else {
            self.pipeline.models_dir.join(file)
        }
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn type_name(value: &toml::Value) -> &'static str {
    value.type_str()
}

/// Records unknown keys and type mismatches of `given` against the default `schema`, and removes
/// them from `given` (their defaults then apply) so that the rest can still be checked.
fn compare(
    prefix: &str,
    given: &mut toml::Table,
    schema: &toml::Table,
    problems: &mut Vec<String>,
) {
    let mut bad = Vec::new();
    for (key, value) in given.iter_mut() {
        let before = problems.len();
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match schema.get(key) {
            None => problems.push(format!("unknown key `{name}`")),
            Some(toml::Value::Table(inner)) => match value {
                toml::Value::Table(given_inner) => {
                    compare(&name, given_inner, inner, problems);
                    continue;
                }
                other => problems.push(format!(
                    "`{name}` must be a table, not of type {}",
                    type_name(other)
                )),
            },
            Some(expected) => {
                let value: &toml::Value = value;
                let fits = matches!(
                    (expected, value),
                    (
                        toml::Value::Float(_),
                        toml::Value::Integer(_) | toml::Value::Float(_)
                    ) | (toml::Value::Integer(_), toml::Value::Integer(_))
                        | (toml::Value::String(_), toml::Value::String(_))
                        | (toml::Value::Boolean(_), toml::Value::Boolean(_))
                        | (toml::Value::Array(_), toml::Value::Array(_))
                );
                if !fits {
                    problems.push(format!(
                        "`{name}` must be of type {}, not {}",
                        type_name(expected),
                        type_name(value)
                    ));
                } else if let (toml::Value::Integer(_), toml::Value::Integer(n)) = (expected, value)
                {
                    if *n < 0 {
                        problems.push(format!("`{name}` must not be negative"));
                    }
                }
            }
        }
        if problems.len() > before {
            bad.push(key.clone());
        }
    }
    for key in bad {
        given.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "colour = 1\n[log]\nformat = 'xml'\n[series]\nmin_slices = 'many'\nmax_gap_factor = 2\nbogus = true\n[pipeline]\nthreads = -1\n";
        let problems = Config::parse(text).unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("unknown key `colour`"), "{all}");
        assert!(all.contains("unknown key `series.bogus`"), "{all}");
        assert!(
            all.contains("`series.min_slices` must be of type integer"),
            "{all}"
        );
        assert!(
            all.contains("`pipeline.threads` must not be negative"),
            "{all}"
        );
        assert!(
            all.contains("log.format must be auto, human or json"),
            "{all}"
        );
        assert_eq!(problems.len(), 5, "{all}");
    }

    #[test]
    fn range_problems_are_reported_together() {
        let problems = Config::parse(
            "[log]\nformat = 'xml'\n[series]\nmin_slices = 3\nmax_gap_factor = 0.5\n",
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn integer_accepted_where_float_expected() {
        let config = Config::parse("[series]\nmax_gap_factor = 2\n").unwrap();
        assert_eq!(config.series.max_gap_factor, 2.0);
    }

    #[test]
    fn segment_regions_are_named_and_checked() {
        use crate::pipeline::segment::SegmentRegions;
        assert_eq!(
            Config::default().pipeline.segment_regions,
            SegmentRegions::Lung
        );
        for (name, regions) in [
            ("lung", SegmentRegions::Lung),
            ("body", SegmentRegions::Body),
            ("whole", SegmentRegions::Whole),
        ] {
            let config =
                Config::parse(&format!("[pipeline]\nsegment_regions = '{name}'\n")).unwrap();
            assert_eq!(config.pipeline.segment_regions, regions);
        }
        let problems = Config::parse("[pipeline]\nsegment_regions = 'lungs'\n").unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn syntax_error_is_one_line() {
        let problems = Config::parse("[series\nmin_slices = 7").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains('\n'));
    }

    #[test]
    fn documented_example_is_complete_and_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/noduled.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::parse(&text).unwrap();
        assert_eq!(
            config,
            Config::default(),
            "the example must show the defaults"
        );
        // Every default key appears in the example (uncommented).
        let given: toml::Table = text.parse().unwrap();
        let schema = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &schema {
            let keys = keys.as_table().unwrap();
            for key in keys.keys() {
                assert!(
                    given.get(section).and_then(|s| s.get(key)).is_some(),
                    "{section}.{key} missing from the example"
                );
            }
        }
    }
}
