//! The `/metrics` scrape as Prometheus reads it: the text exposition
//! format (checked by `promtool check metrics` when it is installed, and
//! by the rules below always), and every metric of SPEC's table present.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};

/// SPEC's metrics table, less those that appear only with a feature in use
/// (`tls_certificate_expiry_timestamp_seconds` with TLS).
const SPEC_METRICS: [&str; 22] = [
    "requests_total",
    "request_duration_seconds",
    "upstream_errors_total",
    "backend_healthy",
    "backend_in_flight",
    "ring_share",
    "ring_generation",
    "ring_info",
    "ring_rebuilds_total",
    "config_reload_failures_total",
    "ring_last_remap_fraction",
    "remapped_requests_total",
    "key_source_total",
    "responses_total",
    "proxy_responses_total",
    "connections_open",
    "connections_total",
    "backend_connections",
    "config_last_reload_successful",
    "config_last_reload_success_timestamp_seconds",
    "build_info",
    "access_log_dropped_total",
];

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
    };
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// Splits `{a="x",b="y\"z"}` into pairs, checking the quoting.
fn labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or(format!("no =\" in {s}"))?;
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value in {s}")),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// The exposition format's rules (version 0.0.4): each family's `# HELP`
/// and `# TYPE` before its samples, valid names, quoted label values,
/// float values, no series twice, counters named `_total`.
fn check_exposition(text: &str) -> Result<HashSet<String>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut series = HashSet::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap_or("");
            if !helped.insert(name.to_string()) {
                return Err(format!("HELP twice for {name}"));
            }
            continue;
        }
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').ok_or(format!("bad TYPE line {line}"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown type {kind}"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(format!("counter {name} does not end in _total"));
            }
            if types.insert(name.into(), kind.into()).is_some() {
                return Err(format!("TYPE twice for {name}"));
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        value
            .parse::<f64>()
            .map_err(|_| format!("value {value:?} is not a float: {line}"))?;
        let (name, label_text) = match head.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .ok_or(format!("unclosed labels: {line}"))?,
            ),
            None => (head, ""),
        };
        if !is_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        labels(label_text)?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !helped.contains(family) {
            return Err(format!("sample before its HELP and TYPE: {line}"));
        }
        if !series.insert(head.to_string()) {
            return Err(format!("series twice: {head}"));
        }
    }
    Ok(types.into_keys().collect())
}

#[tokio::test]
async fn the_scrape_is_valid_exposition_text_with_every_spec_metric() {
    let pool = spawn_backends(2).await;
    // Started as the binary starts: the file read and the ring published.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text(&pool.iter().collect::<Vec<_>>(), "", "")).unwrap();
    let metrics = std::sync::Arc::new(stickylb::observe::metrics::Metrics::new());
    let (_, snap) = stickylb::control::reload::load_initial(&path, &metrics).expect("config");
    let router = std::sync::Arc::new(stickylb::routing::snapshot::Router::new(snap));
    let proxy = start_proxy(router, metrics).await;
    let client = client();
    for id in ["a", "b", "c"] {
        backend_for(&client, proxy.addr, id).await;
    }
    let text = proxy.metrics_text().await;
    let families = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for name in SPEC_METRICS {
        let full = format!("stickylb_{name}");
        assert!(families.contains(&full), "{full} missing:\n{text}");
    }
    for name in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
        assert!(families.contains(name), "{name} missing");
    }
    // Label values are closed or configured: never client data.
    assert!(!text.contains("client-"), "{text}");
    // A scrape without TLS has no certificate expiry (a 0 would read as expired).
    assert!(!text.contains("tls_certificate_expiry"), "{text}");
    // Connections to each backend, idle and active.
    for b in &pool {
        let idle = metric(
            &text,
            &format!(
                "stickylb_backend_connections{{backend=\"{}\",state=\"idle\"}}",
                b.name
            ),
        );
        assert!(idle.is_some(), "{text}");
    }

    // promtool, where installed, says the same.
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the exposition rules above were checked by the test");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_exposition_check_catches_what_it_should() {
    let good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"q\\\"\"} 1\n";
    assert!(check_exposition(good).is_ok());
    for bad in [
        "x_total 1\n",
        "# HELP x X.\n# TYPE x counter\nx 1\n",
        "# HELP x X.\n# TYPE x gauge\nx{a=\"1} 1\n",
        "# HELP x X.\n# TYPE x gauge\nx one\n",
        "# HELP x X.\n# TYPE x gauge\nx 1\nx 2\n",
        "# HELP x X.\n# TYPE x gauge\n9x 1\n",
    ] {
        assert!(check_exposition(bad).is_err(), "{bad}");
    }
}
