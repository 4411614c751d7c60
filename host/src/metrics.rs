//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! `/metrics` needs no key (API.md), so what it shows must be safe for anyone who can reach
//! the port: counts and durations, labelled by method, route template and status only.
//!
//! INVARIANT: no label holds a request's path, a name or id a caller chose, a value or a
//! token. Routes are the router's templates (`/v1/vaults/{vault}`), an unknown path is
//! `unmatched`, and a method outside the standard ones is `other`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

/// The route label of a request the router matched, put in the response's extensions by the
/// layer that knows it.
#[derive(Clone, Debug)]
pub struct MatchedRoute(pub String);

/// The label for a request no route matched.
pub const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latencies: 0.25 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Histograms<RouteLabels>,
    audit_events: Counter,
    audit_failures: Counter,
    audit_batches: Histogram,
    upstream: Histograms<UpstreamLabels>,
    pool: Family<PoolLabels, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("strongroom");
    let requests = Family::<RequestLabels, Counter>::default();
    registry.register(
        "http_requests",
        "HTTP requests answered, by method, route template and status",
        requests.clone(),
    );
    let durations: Histograms<RouteLabels> = Family::new_with_constructor(latency_histogram);
    registry.register(
        "http_request_duration_seconds",
        "Time from a request's arrival to its answer (its audit event written), by method and route template",
        durations.clone(),
    );
    let audit_events = Counter::default();
    registry.register(
        "audit_events",
        "Audit events appended to the chain",
        audit_events.clone(),
    );
    let audit_failures = Counter::default();
    registry.register(
        "audit_write_failures",
        "Audit batches that could not be written (their requests were answered 503)",
        audit_failures.clone(),
    );
    let audit_batches = latency_histogram();
    registry.register(
        "audit_batch_duration_seconds",
        "Time to write one batch of audit events, commit included",
        audit_batches.clone(),
    );
    let upstream: Histograms<UpstreamLabels> = Family::new_with_constructor(latency_histogram);
    registry.register(
        "upstream_duration_seconds",
        "Connection calls to third parties (outbound) and upstreams (inbound), by outcome",
        upstream.clone(),
    );
    let pool = Family::<PoolLabels, Gauge>::default();
    registry.register(
        "db_pool_connections",
        "Database connections of the server's pool: open, idle, and requests waiting for one",
        pool.clone(),
    );
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![(
        "version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )])
    .set(1);
    registry.register("build", "The server's version", info);
    Metrics {
        registry,
        requests,
        durations,
        audit_events,
        audit_failures,
        audit_batches,
        upstream,
        pool,
    }
});

/// A method's name, or `other` for one that is not standard: a method is any token a client
/// chooses, so it may hold a value. Metrics, the request log and audit events use this.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts an answered request. `route` is a route template or [`UNMATCHED`].
pub fn request(method: &http::Method, route: String, status: u16, took: Duration) {
    let m = &*METRICS;
    let method = method_label(method);
    m.durations
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(took.as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
}

/// Counts a written audit batch of `events`, or a failed one.
pub fn audit_batch(events: usize, ok: bool, took: Duration) {
    let m = &*METRICS;
    if ok {
        m.audit_events.inc_by(events as u64);
    } else {
        m.audit_failures.inc();
    }
    m.audit_batches.observe(took.as_secs_f64());
}

/// Which way a connection call went.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// Times a call to a connection's third party or upstream. `outcome`: `answered` (any status),
/// `timeout`, or `failed`.
pub fn upstream(direction: Direction, outcome: &'static str, took: Duration) {
    let direction = match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    };
    METRICS
        .upstream
        .get_or_create(&UpstreamLabels { direction, outcome })
        .observe(took.as_secs_f64());
}

/// The text of `GET /metrics`, with the pool's gauges read now.
pub fn render(pool: deadpool_postgres::Status) -> String {
    let m = &*METRICS;
    for (state, value) in [
        ("open", pool.size),
        ("idle", pool.available),
        ("waiting", pool.waiting),
    ] {
        m.pool
            .get_or_create(&PoolLabels { state })
            .set(value as i64);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

/// The media type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_hold_templates_and_standard_methods_only() {
        let custom = http::Method::from_bytes(b"X4111111111111111").unwrap();
        request(
            &custom,
            "/v1/vaults/{vault}".into(),
            404,
            Duration::from_millis(3),
        );
        request(
            &http::Method::GET,
            UNMATCHED.into(),
            404,
            Duration::from_millis(1),
        );
        let text = render(deadpool_postgres::Status {
            max_size: 4,
            size: 2,
            available: 1,
            waiting: 0,
        });
        assert!(!text.contains("4111"), "{text}");
        assert!(text.contains(
            r#"strongroom_http_requests_total{method="other",route="/v1/vaults/{vault}",status="404"} "#
        ));
        assert!(text.contains(r#"strongroom_db_pool_connections{state="open"} 2"#));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
