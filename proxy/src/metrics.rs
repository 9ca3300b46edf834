//! Prometheus metrics of the proxy, named `blockproxy_<subsystem>_<name>_<unit>`. Cache gauges
//! are refreshed from the index at scrape time, so they never drift from the truth.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub cache_hits_total: IntCounter,
    pub cache_misses_total: IntCounter,
    pub cache_served_bytes_total: IntCounterVec,
    pub cache_corrupt_blocks_total: IntCounter,
    pub cache_used_bytes: IntGauge,
    pub cache_quota_bytes: IntGauge,
    pub cache_blocks: IntGauge,
    pub cache_open_files: IntGauge,
    pub cache_dirty_blocks: IntGauge,
    pub cache_dirty_bytes: IntGauge,
    pub cache_oldest_dirty_age_seconds: prometheus::Gauge,
    pub store_requests_total: IntCounterVec,
    pub store_read_bytes_total: IntCounter,
    pub writeback_queue_depth: IntGauge,
    pub writeback_flush_seconds: Histogram,
    pub writeback_flush_errors_total: IntCounterVec,
    pub writeback_flushes_total: IntCounter,
    pub writeback_bytes_total: IntCounter,
    pub writeback_skipped_newer_total: IntCounter,
    pub writeback_quarantined_blocks: IntGauge,
    pub writeback_quarantined_total: IntCounter,
    pub http_backpressure_total: IntCounter,
    pub http_inflight_bytes: IntGauge,
    pub http_sendfile_bytes_total: IntCounter,
    pub http_writes_superseded_total: IntCounter,
    pub http_versions_refused_total: IntCounter,
    pub http_timeouts_total: IntCounterVec,
    pub cache_revalidations_total: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are unique constants, so registration cannot fail.
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let latency = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        Self {
            http_requests_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("blockproxy_http_requests_total", "Requests by operation and status code"),
                    &["op", "status"],
                )
                .expect("valid"),
            ),
            http_request_duration_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("blockproxy_http_request_duration_seconds", "Request latency by operation")
                        .buckets(latency.clone()),
                    &["op"],
                )
                .expect("valid"),
            ),
            cache_hits_total: reg(
                &r,
                IntCounter::new("blockproxy_cache_hits_total", "Block reads served from the local cache")
                    .expect("valid"),
            ),
            cache_misses_total: reg(
                &r,
                IntCounter::new("blockproxy_cache_misses_total", "Block reads that went to the object store")
                    .expect("valid"),
            ),
            cache_served_bytes_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "blockproxy_cache_served_bytes_total",
                        "Bytes returned to clients by source (cache = egress saved)",
                    ),
                    &["source"],
                )
                .expect("valid"),
            ),
            cache_corrupt_blocks_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_cache_corrupt_blocks_total",
                    "Cached blocks that failed checksum verification",
                )
                .expect("valid"),
            ),
            cache_used_bytes: reg(
                &r,
                IntGauge::new("blockproxy_cache_used_bytes", "Bytes used by cached blocks, clean and dirty")
                    .expect("valid"),
            ),
            cache_quota_bytes: reg(&r, IntGauge::new("blockproxy_cache_quota_bytes", "Cache quota").expect("valid")),
            cache_blocks: reg(&r, IntGauge::new("blockproxy_cache_blocks", "Blocks in the cache").expect("valid")),
            cache_open_files: reg(
                &r,
                IntGauge::new("blockproxy_cache_open_files", "Block files held open for hits (--open-files)")
                    .expect("valid"),
            ),
            cache_dirty_blocks: reg(
                &r,
                IntGauge::new("blockproxy_cache_dirty_blocks", "Acknowledged blocks not yet in the store")
                    .expect("valid"),
            ),
            cache_dirty_bytes: reg(
                &r,
                IntGauge::new("blockproxy_cache_dirty_bytes", "Bytes of acknowledged blocks not yet in the store")
                    .expect("valid"),
            ),
            cache_oldest_dirty_age_seconds: reg(
                &r,
                prometheus::Gauge::new(
                    "blockproxy_cache_oldest_dirty_age_seconds",
                    "Age of the oldest unflushed block",
                )
                .expect("valid"),
            ),
            store_read_bytes_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_store_read_bytes_total",
                    "Bytes fetched from the object store for reads (whole blocks and ranges)",
                )
                .expect("valid"),
            ),
            store_requests_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("blockproxy_store_requests_total", "Object-store requests made for reads, by operation"),
                    &["op"],
                )
                .expect("valid"),
            ),
            writeback_queue_depth: reg(
                &r,
                IntGauge::new("blockproxy_writeback_queue_depth", "Blocks waiting for or in writeback").expect("valid"),
            ),
            writeback_flush_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "blockproxy_writeback_flush_seconds",
                        "Time to flush one block, retries included",
                    )
                    .buckets(latency),
                )
                .expect("valid"),
            ),
            writeback_flush_errors_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("blockproxy_writeback_flush_errors_total", "Failed flush attempts (each is retried)"),
                    &["reason"],
                )
                .expect("valid"),
            ),
            writeback_flushes_total: reg(
                &r,
                IntCounter::new("blockproxy_writeback_flushes_total", "Blocks flushed to the store").expect("valid"),
            ),
            writeback_bytes_total: reg(
                &r,
                IntCounter::new("blockproxy_writeback_bytes_total", "Bytes written back to the store").expect("valid"),
            ),
            writeback_skipped_newer_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_writeback_skipped_newer_total",
                    "Flushes skipped because the store held a newer version",
                )
                .expect("valid"),
            ),
            writeback_quarantined_blocks: reg(
                &r,
                IntGauge::new(
                    "blockproxy_writeback_quarantined_blocks",
                    "Dirty blocks in quarantine/ that can never be flushed as they are; recover them by hand",
                )
                .expect("valid"),
            ),
            writeback_quarantined_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_writeback_quarantined_total",
                    "Dirty blocks moved to quarantine by this process (permanent store error or corrupt on disk)",
                )
                .expect("valid"),
            ),
            http_backpressure_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_http_backpressure_total",
                    "Writes refused with 503 because dirty data reached the quota",
                )
                .expect("valid"),
            ),
            http_inflight_bytes: reg(
                &r,
                IntGauge::new(
                    "blockproxy_http_inflight_bytes",
                    "Request bytes reserved in memory right now (bounded by --max-inflight-bytes)",
                )
                .expect("valid"),
            ),
            http_sendfile_bytes_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_http_sendfile_bytes_total",
                    "Hit bytes sent from cache files with sendfile (plain HTTP/1), not copied through memory",
                )
                .expect("valid"),
            ),
            http_writes_superseded_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_http_writes_superseded_total",
                    "Writes answered 409 because a newer version of the block was already there",
                )
                .expect("valid"),
            ),
            http_versions_refused_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_http_versions_refused_total",
                    "Writes refused with 400 because their version was too far ahead of the proxy's clock",
                )
                .expect("valid"),
            ),
            http_timeouts_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("blockproxy_http_timeouts_total", "Connections or requests cut by a timeout, by phase"),
                    &["phase"],
                )
                .expect("valid"),
            ),
            cache_revalidations_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "blockproxy_cache_revalidations_total",
                        "Clean blocks checked against the store after --metadata-ttl, by result (current, changed, error)",
                    ),
                    &["result"],
                )
                .expect("valid"),
            ),
            registry: r,
        }
    }

    pub fn set_usage(&self, u: crate::cache::Usage, oldest_dirty: Option<std::time::Duration>) {
        self.cache_used_bytes.set(u.used_bytes as i64);
        self.cache_quota_bytes.set(u.quota as i64);
        self.cache_blocks.set(u.blocks as i64);
        self.cache_open_files.set(u.open_files as i64);
        self.cache_dirty_blocks.set(u.dirty_blocks as i64);
        self.cache_dirty_bytes.set(u.dirty_bytes as i64);
        self.cache_oldest_dirty_age_seconds.set(oldest_dirty.map_or(0.0, |d| d.as_secs_f64()));
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
