//! Prometheus metrics: what the queue, the runs, the uploads and the engine did since the server
//! started. Counters and histograms are moved where things happen; the gauges are read when
//! `/metrics` is scraped. Encoded by the `prometheus` crate in the text exposition format 0.0.4,
//! which every Prometheus and `promtool check metrics` read.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};
use time::OffsetDateTime;

use crate::model::{Outcome, Run, RunKind, RunStatus};

/// Every metric of one server.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub queued: IntGauge,
    pub running: IntGauge,
    engine_up: IntGaugeVec,
    engine_slots: IntGaugeVec,
    engine_runs: IntCounterVec,
    finished: IntCounterVec,
    duration: HistogramVec,
    queue_wait: HistogramVec,
    pub upload_bytes: IntCounter,
    pub log_bytes: IntCounter,
    pub start_failures: IntCounter,
}

impl Metrics {
    /// The metrics of a server with these engines.
    pub fn new(engines: &[&str]) -> Metrics {
        let registry = Registry::new();
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
            registry.register(Box::new(g.clone())).expect("a new name");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid gauge");
            registry.register(Box::new(g.clone())).expect("a new name");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid counter");
            registry.register(Box::new(c.clone())).expect("a new name");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            let h = HistogramVec::new(opts, &["kind"]).expect("a valid histogram");
            registry.register(Box::new(h.clone())).expect("a new name");
            h
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
            registry.register(Box::new(c.clone())).expect("a new name");
            c
        };
        let finished = counters(
            "precheck_runs_finished_total",
            "Runs that ended, by kind and status.",
            &["kind", "status"],
        );
        let metrics = Metrics {
            queued: gauge("precheck_queue_length", "Runs waiting in the queue."),
            running: gauge("precheck_running", "Runs whose container runs."),
            engine_up: gauges(
                "precheck_engine_up",
                "1 if the Docker engine answered the scrape, else 0.",
                &["engine"],
            ),
            engine_slots: gauges(
                "precheck_engine_slots",
                "An engine's slots: runs on it now (used) and how many may run at once (total).",
                &["engine", "state"],
            ),
            engine_runs: counters(
                "precheck_engine_runs_started_total",
                "Runs that left the queue for an engine, by engine and kind.",
                &["engine", "kind"],
            ),
            finished,
            // 1 s to about 9 hours: prechecks and builds take minutes to hours.
            duration: histogram(
                "precheck_run_duration_seconds",
                "Time from a run's start to its end.",
                exponential_buckets(1.0, 2.0, 16).expect("valid buckets"),
            ),
            // 0.1 s to about 7 hours.
            queue_wait: histogram(
                "precheck_queue_wait_seconds",
                "Time a run waited in the queue before it started.",
                exponential_buckets(0.1, 2.0, 18).expect("valid buckets"),
            ),
            upload_bytes: counter(
                "precheck_upload_bytes_total",
                "Bytes of layouts received by POST /api/v1/uploads.",
            ),
            log_bytes: counter("precheck_log_bytes_total", "Bytes written to runs' logs."),
            start_failures: counter(
                "precheck_container_start_failures_total",
                "Containers that could not be created or started.",
            ),
            registry,
        };
        // Every series exists from the start, at 0, so a rate over it is defined.
        for kind in RunKind::ALL {
            for status in RunStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
                metrics
                    .finished
                    .with_label_values(&[kind.as_str(), status.as_str()]);
            }
            metrics.duration.with_label_values(&[kind.as_str()]);
            metrics.queue_wait.with_label_values(&[kind.as_str()]);
            for engine in engines {
                metrics
                    .engine_runs
                    .with_label_values(&[engine, kind.as_str()]);
            }
        }
        metrics
    }

    /// Counts a run that ended, with how long it ran.
    pub fn run_finished(&self, run: &Run, outcome: &Outcome, now: OffsetDateTime) {
        let kind = run.kind().as_str();
        self.finished
            .with_label_values(&[kind, outcome.status.as_str()])
            .inc();
        if let Some(started) = run.started_at {
            self.duration
                .with_label_values(&[kind])
                .observe((now - started).as_seconds_f64().max(0.0));
        }
    }

    /// An engine as the scrape found it.
    pub fn engine(&self, name: &str, up: bool, used: usize, total: usize) {
        self.engine_up.with_label_values(&[name]).set(i64::from(up));
        let slots = &self.engine_slots;
        slots.with_label_values(&[name, "used"]).set(used as i64);
        slots.with_label_values(&[name, "total"]).set(total as i64);
    }

    /// Records how long a run waited in the queue and where it went, as it starts.
    pub fn run_started(&self, run: &Run) {
        if let Some(engine) = &run.engine {
            self.engine_runs
                .with_label_values(&[engine, run.kind().as_str()])
                .inc();
        }
        if let Some(started) = run.started_at {
            self.queue_wait
                .with_label_values(&[run.kind().as_str()])
                .observe((started - run.created).as_seconds_f64().max(0.0));
        }
    }

    /// The text exposition of every metric, and its content type.
    pub fn render(&self) -> (String, String) {
        let encoder = TextEncoder::new();
        let mut text = Vec::new();
        // Encoding into memory fails only for metrics this module never makes.
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut text) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        (
            String::from_utf8_lossy(&text).into_owned(),
            encoder.format_type().to_string(),
        )
    }
}

impl Default for Metrics {
    /// The metrics of a server with one engine, `local`.
    fn default() -> Self {
        Metrics::new(&[crate::config::LOCAL_ENGINE])
    }
}
