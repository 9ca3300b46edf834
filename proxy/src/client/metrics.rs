//! Client metrics (`blockproxy_client_*`): the chosen group, RTTs, per-proxy health and errors,
//! fallbacks, read repairs.

use prometheus::{Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct ClientMetrics {
    registry: Registry,
    pub chosen_group: IntGaugeVec,
    pub group_rtt_seconds: GaugeVec,
    pub proxy_rtt_seconds: GaugeVec,
    pub proxy_up: IntGaugeVec,
    pub proxy_errors_total: IntCounterVec,
    pub group_switches_total: IntCounterVec,
    pub fallbacks_total: IntCounterVec,
    pub requests_total: IntCounterVec,
    pub served_total: IntCounterVec,
    pub read_repairs_total: IntCounter,
    pub stale_reads_total: IntCounter,
    pub probe_rounds_total: IntCounter,
    pub discovery_errors_total: IntCounter,
    pub read_ahead_bytes: IntGauge,
    pub read_ahead_waits_total: IntCounter,
    pub read_pieces_total: IntCounter,
    pub write_buffer_bytes: IntGauge,
    pub write_buffer_waits_total: IntCounter,
    /// The S3 endpoint's connections cut by a timeout (the sidecar's; the library serves none).
    pub s3_timeouts_total: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are unique constants, so registration cannot fail.
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

impl ClientMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let o = |n: &str, h: &str| Opts::new(n, h);
        Self {
            chosen_group: reg(
                &r,
                IntGaugeVec::new(o("blockproxy_client_chosen_group", "1 for the group requests go to"), &["group"])
                    .expect("valid"),
            ),
            group_rtt_seconds: reg(
                &r,
                GaugeVec::new(
                    o("blockproxy_client_group_rtt_seconds", "Median RTT of the group's healthy proxies; -1 when none"),
                    &["group"],
                )
                .expect("valid"),
            ),
            proxy_rtt_seconds: reg(
                &r,
                GaugeVec::new(
                    o("blockproxy_client_proxy_rtt_seconds", "Median ping RTT of a proxy"),
                    &["group", "proxy"],
                )
                .expect("valid"),
            ),
            proxy_up: reg(
                &r,
                IntGaugeVec::new(o("blockproxy_client_proxy_up", "1 when the proxy answers"), &["group", "proxy"])
                    .expect("valid"),
            ),
            proxy_errors_total: reg(
                &r,
                IntCounterVec::new(
                    o("blockproxy_client_proxy_errors_total", "Failed requests and probes per proxy"),
                    &["group", "proxy", "kind"],
                )
                .expect("valid"),
            ),
            group_switches_total: reg(
                &r,
                IntCounterVec::new(
                    o("blockproxy_client_group_switches_total", "Changes of the chosen group"),
                    &["reason"],
                )
                .expect("valid"),
            ),
            fallbacks_total: reg(
                &r,
                IntCounterVec::new(
                    o(
                        "blockproxy_client_fallbacks_total",
                        "Requests served by other than the first choice: next proxy, next group, the store",
                    ),
                    &["kind"],
                )
                .expect("valid"),
            ),
            requests_total: reg(
                &r,
                IntCounterVec::new(
                    o("blockproxy_client_requests_total", "Block requests by operation and where they were served"),
                    &["op", "target"],
                )
                .expect("valid"),
            ),
            served_total: reg(
                &r,
                IntCounterVec::new(
                    o(
                        "blockproxy_client_served_total",
                        "Requests answered, by operation and by whom: a group's name, or `store` (directly)",
                    ),
                    &["op", "by"],
                )
                .expect("valid"),
            ),
            read_repairs_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_client_read_repairs_total",
                    "Reads that found a newer version than the owner's and repaired it",
                )
                .expect("valid"),
            ),
            stale_reads_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_client_stale_reads_total",
                    "Reads that found a copy older than this client's own last write and looked further",
                )
                .expect("valid"),
            ),
            probe_rounds_total: reg(
                &r,
                IntCounter::new("blockproxy_client_probe_rounds_total", "RTT probe rounds").expect("valid"),
            ),
            discovery_errors_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_client_discovery_errors_total",
                    "Discovery file reads rejected (last good kept)",
                )
                .expect("valid"),
            ),
            read_ahead_bytes: reg(
                &r,
                IntGauge::new(
                    "blockproxy_client_read_ahead_bytes",
                    "Bytes of blocks fetched ahead of the reader and not yet sent (at most --read-ahead-bytes)",
                )
                .expect("valid"),
            ),
            read_ahead_waits_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_client_read_ahead_waits_total",
                    "Read-ahead fetches that waited for --read-ahead-bytes (reads slowed by the memory bound)",
                )
                .expect("valid"),
            ),
            read_pieces_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_client_read_pieces_total",
                    "Blocks read in 1 MiB pieces because --read-ahead-bytes was full (reads slowed by the memory bound)",
                )
                .expect("valid"),
            ),
            write_buffer_bytes: reg(
                &r,
                IntGauge::new(
                    "blockproxy_client_write_buffer_bytes",
                    "Bytes of write bodies held until their proxy answers (at most --write-buffer-bytes)",
                )
                .expect("valid"),
            ),
            write_buffer_waits_total: reg(
                &r,
                IntCounter::new(
                    "blockproxy_client_write_buffer_waits_total",
                    "Writes that waited for --write-buffer-bytes before reading their body (writes slowed by the memory bound)",
                )
                .expect("valid"),
            ),
            s3_timeouts_total: reg(
                &r,
                IntCounterVec::new(
                    o("blockproxy_client_s3_timeouts_total", "S3 endpoint connections cut by a timeout, by phase"),
                    &["phase"],
                )
                .expect("valid"),
            ),
            registry: r,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self::new()
    }
}
