//! Prometheus metrics (`/metrics`): associations, instances, series and jobs by state, and the
//! seconds each analysis stage took. Counters are updated where things happen; the by-state
//! gauges are read from the store at scrape time, so they are right after a restart too.

use crate::pipeline::StageSeconds;
use crate::store::StoreCounts;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

pub struct Metrics {
    registry: Mutex<Registry>,
    associations: Family<Labels, Counter>,
    open: Gauge,
    instances: Family<Labels, Counter>,
    jobs: Family<Labels, Counter>,
    stages: Family<Labels, Histogram>,
    stored: Gauge,
    series_state: Family<Labels, Gauge>,
    job_state: Family<Labels, Gauge>,
}

/// Decrements the open-associations gauge when the association ends.
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("noduled");
        let associations = Family::<Labels, Counter>::default();
        let open = Gauge::default();
        let instances = Family::<Labels, Counter>::default();
        let jobs = Family::<Labels, Counter>::default();
        let stages = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        let stored = Gauge::default();
        let series_state = Family::<Labels, Gauge>::default();
        let job_state = Family::<Labels, Gauge>::default();
        registry.register(
            "associations",
            "Associations by result (accepted, rejected, refused_limit)",
            associations.clone(),
        );
        registry.register("associations_open", "Associations open now", open.clone());
        registry.register(
            "instances_received",
            "C-STORE and drop-folder instances by outcome",
            instances.clone(),
        );
        registry.register(
            "jobs",
            "Analysis job events (queued, done, refused, failed)",
            jobs.clone(),
        );
        registry.register(
            "stage_seconds",
            "Seconds per analysis stage",
            stages.clone(),
        );
        registry.register("instances_stored", "Instances in the store", stored.clone());
        registry.register("series", "Series by state", series_state.clone());
        registry.register("jobs_by_state", "Analysis jobs by state", job_state.clone());
        Metrics {
            registry: Mutex::new(registry),
            associations,
            open,
            instances,
            jobs,
            stages,
            stored,
            series_state,
            job_state,
        }
    }

    pub fn association(&self, result: &str) {
        self.associations
            .get_or_create(&label("result", result))
            .inc();
    }

    pub fn open_association(&self) -> OpenGuard {
        self.open.inc();
        OpenGuard(self.open.clone())
    }

    pub fn instance(&self, outcome: &str) {
        self.instances
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    pub fn job(&self, event: &str) {
        self.jobs.get_or_create(&label("event", event)).inc();
    }

    pub fn stage_seconds(&self, seconds: &StageSeconds) {
        for (stage, value) in [
            ("load", seconds.load),
            ("segment", seconds.segment),
            ("group", seconds.group),
            ("classify", seconds.classify),
            ("total", seconds.total),
        ] {
            self.stages
                .get_or_create(&label("stage", stage))
                .observe(value);
        }
    }

    /// The text exposition, with the by-state gauges refreshed from `counts`.
    pub fn render(&self, counts: &StoreCounts) -> String {
        self.stored.set(counts.instances as i64);
        for state in ["receiving", "queued", "analysed", "refused", "report"] {
            let n = counts.series_by_state.get(state).copied().unwrap_or(0);
            self.series_state
                .get_or_create(&label("state", state))
                .set(n as i64);
        }
        for state in ["queued", "running", "done", "failed"] {
            let n = counts.jobs_by_state.get(state).copied().unwrap_or(0);
            self.job_state
                .get_or_create(&label("state", state))
                .set(n as i64);
        }
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}
