//! The config parser and its rules: good files with their values, then
//! every rejection as one (text, line, column, words) row.

use super::parse::{default_keys, key_source, validate_host_port};
use super::*;

const ONE: &str = "[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n";

fn parse(text: &str) -> Config {
    from_toml_str(text, "t.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `n` backends named b0.. on ports 20000..
fn pool(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[backend]]\nname = \"b{i}\"\naddress = \"127.0.0.1:{}\"\n",
                20_000 + i
            )
        })
        .collect()
}

#[test]
fn minimal_file_gets_defaults() {
    let c = parse(ONE);
    assert_eq!(c.listen.address, DEFAULT_LISTEN);
    assert_eq!(c.admin.address, DEFAULT_ADMIN);
    assert_eq!(c.routing.key, default_keys());
    assert_eq!(c.routing.missing_key, MissingKey::ClientIp);
    assert_eq!(c.routing.algorithm, Algorithm::Ring { vnodes: 160 });
    assert_eq!(c.timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.timeouts.upgraded_idle, Duration::from_secs(3600));
    assert_eq!(c.timeouts.shutdown_delay, Duration::ZERO);
    assert_eq!(c.health, None);
    assert_eq!(c.limits.max_connections, 20_000);
    assert_eq!(c.limits.max_request_header_bytes, 16_384);
    assert_eq!(c.log, Log::default());
    assert_eq!(c.backends[0].weight.get(), 1);
    assert_eq!(c.listen.plain_listener(), Some(c.listen.address));
    assert!(c.warnings.is_empty());
}

#[test]
fn shipped_config_parses() {
    let c = parse(include_str!("../../config.toml"));
    assert!(c.backends.len() >= 3);
}

#[test]
fn every_setting_is_read() {
    let c = parse(&format!(
        "[listen]\naddress = \"127.0.0.1:80\"\ntls = {{ cert = \"tls/c.pem\", key = \"/k.pem\" }}\n\
         tls_address = \"127.0.0.1:443\"\n[admin]\naddress = \"[::1]:9\"\n\
         [routing]\nkey = [\"header:X-Id\", \"query:u\", \"client-ip\"]\nmissing_key = \"reject\"\n\
         seed = 7\nbalance_factor = 1.25\nsticky_cookie = {{ name = \"lb\" }}\n\
         [timeouts]\nupgraded_idle = \"5m\"\nshutdown_delay = \"0s\"\nconnect = \"1us\"\n\
         [health]\ninterval = \"100ms\"\nfall = 1000\n\
         [limits]\nmax_backend_connections = 8\n[log]\naccess = true\nformat = \"json\"\n{ONE}weight = 3\n"
    ));
    let tls = c.listen.tls.as_ref().unwrap();
    assert_eq!(
        (tls.cert.to_str(), tls.key.to_str()),
        (Some("tls/c.pem"), Some("/k.pem"))
    );
    assert_eq!(c.listen.tls_at, Some([(3, 16), (3, 35)]));
    assert_eq!(c.listen.plain_listener(), Some(c.listen.address));
    assert_eq!(
        c.listen.tls_listener(),
        Some("127.0.0.1:443".parse().unwrap())
    );
    assert_eq!(c.admin.address, "[::1]:9".parse().unwrap());
    let keys = [
        KeySource::Header("x-id".into()),
        KeySource::Query("u".into()),
        KeySource::ClientIp,
    ];
    assert_eq!(c.routing.key, keys);
    assert_eq!(c.routing.missing_key, MissingKey::Reject);
    assert_eq!((c.routing.seed, c.routing.balance_factor), (7, Some(1.25)));
    let cookie = c.routing.sticky_cookie.as_ref().unwrap();
    assert_eq!(
        (cookie.name.as_str(), cookie.max_age),
        ("lb", DEFAULT_COOKIE_MAX_AGE)
    );
    assert_eq!(c.timeouts.upgraded_idle, Duration::from_secs(300));
    assert_eq!(c.timeouts.connect, Duration::from_micros(1));
    let h = c.health.unwrap();
    assert_eq!(
        (h.path.as_str(), h.interval, h.fall, h.rise),
        ("/healthz", MIN_HEALTH_INTERVAL, 1000, 2)
    );
    assert_eq!(c.limits.max_backend_connections, 8);
    assert_eq!(
        c.log,
        Log {
            access: true,
            format: LogFormat::Json
        }
    );
    assert_eq!(c.backends[0].weight.get(), 3);
}

#[test]
fn algorithms_parse() {
    let routing = |r: &str| parse(&format!("[routing]\n{r}\n{ONE}")).routing.algorithm;
    assert_eq!(
        routing("algorithm = \"maglev\""),
        Algorithm::Maglev { table_size: 65537 }
    );
    assert_eq!(
        routing("algorithm = \"maglev\"\ntable_size = 1009"),
        Algorithm::Maglev { table_size: 1009 }
    );
    assert_eq!(routing("algorithm = \"rendezvous\""), Algorithm::Rendezvous);
    assert_eq!(
        routing("algorithm = \"ring\"\nvnodes = 40"),
        Algorithm::Ring { vnodes: 40 }
    );
}

/// Every rejection: the text, where the error points (line, column) and
/// words its message must hold. One row fails at a time, named by its text.
#[test]
fn every_rejection_names_its_line_column_and_cause() {
    let p200 = pool(200);
    let rows: Vec<(String, usize, usize, &[&str])> = vec![
        (String::new(), 1, 1, &["pool is empty"]),
        (format!("{ONE}weight = 0\n"), 4, 10, &["backend.weight must be from 1 to", "not 0"]),
        (format!("{ONE}weight = 1.5\n"), 4, 10, &["backend.weight", "float"]),
        (format!("{ONE}colour = \"red\"\n"), 4, 1, &["unknown field `colour`"]),
        ("[routing]\nbogus = 1\n".into(), 2, 1, &["unknown field `bogus`"]),
        (format!("{ONE}[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9002\"\n"), 5, 8, &["duplicate backend name \"a\" (first used on line 2)"]),
        (format!("{ONE}[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:9001\"\n"), 6, 11, &["duplicate backend address", "line 3"]),
        ("[[backend]]\nname = \" \"\naddress = \"127.0.0.1:1\"\n".into(), 2, 8, &["backend.name", "non-empty printable"]),
        ("[[backend]]\nname = \"a\"\naddress = \"nowhere\"\n".into(), 3, 11, &["backend.address", "must be host:port"]),
        ("[[backend]]\nname = \"a\"\naddress = \"h:0\"\n".into(), 3, 11, &["must be host:port"]),
        ("[[backend]]\nname = \"a\"\n".into(), 1, 1, &["missing field `address`"]),
        (format!("[timeouts]\nconnect = \"fast\"\n{ONE}"), 2, 11, &["timeouts.connect: \"fast\" is not a duration", "\"500ms\""]),
        (format!("[timeouts]\nidle = \"0s\"\n{ONE}"), 2, 8, &["timeouts.idle must be greater than zero"]),
        (format!("[timeouts]\nidle = \"2y\"\n{ONE}"), 2, 8, &["longer than the 1 year allowed"]),
        (format!("[timeouts]\nidle = 5\n{ONE}"), 2, 8, &["timeouts.idle", "expected a string"]),
        (format!("[health]\nfall = 0\n{ONE}"), 2, 8, &["health.fall must be from 1 to 1000, not 0"]),
        (format!("[health]\nrise = 1001\n{ONE}"), 2, 8, &["health.rise must be from 1 to 1000"]),
        (format!("[health]\ninterval = \"99ms\"\n{ONE}"), 2, 12, &["health.interval must be at least 100ms"]),
        (format!("[health]\npath = \"healthz\"\n{ONE}"), 2, 8, &["health.path must be an absolute path"]),
        (format!("[limits]\nmax_request_header_bytes = 100\n{ONE}"), 2, 28, &["limits.max_request_header_bytes must be from 8192"]),
        (format!("[limits]\nmax_connections = 0\n{ONE}"), 2, 19, &["limits.max_connections must be from 1 to 10000000"]),
        (format!("[log]\nformat = \"xml\"\n{ONE}"), 2, 10, &["log.format", "unknown variant `xml`", "`json`"]),
        (format!("[routing]\nalgorithm = \"jump\"\n{ONE}"), 2, 13, &["routing.algorithm", "unknown variant `jump`", "`maglev`"]),
        (format!("[routing]\nmissing_key = \"drop\"\n{ONE}"), 2, 15, &["routing.missing_key", "`reject`"]),
        (format!("[routing]\nkey = [\"body:x\"]\n{ONE}"), 2, 8, &["routing.key entry \"body:x\": unknown source \"body\""]),
        (format!("[routing]\nkey = [\"header:\"]\n{ONE}"), 2, 8, &["routing.key entry \"header:\": \"\" is not a valid header name"]),
        (format!("[routing]\nkey = [\"client-ip\", \"x\"]\n{ONE}"), 2, 21, &["routing.key entry \"x\" must be \"header:NAME\""]),
        (format!("[routing]\nkey = [\n  \"header:x\",\n  \"bogus:y\",\n]\n{ONE}"), 4, 3, &["entry \"bogus:y\""]),
        (format!("[routing]\nkey = [\"client-ip:x\"]\n{ONE}"), 2, 8, &["client-ip takes no name"]),
        (format!("[routing]\nseed = -1\n{ONE}"), 2, 8, &["routing.seed must be from 0"]),
        (format!("[routing]\nvnodes = 0\n{ONE}"), 2, 10, &["routing.vnodes must be from 1 to 16777216, not 0"]),
        (format!("[routing]\nvnodes = 16777216\n{}", pool(2)), 2, 10, &["routing.vnodes (16777216) × total weight (2) exceeds 16777216 ring points"]),
        (format!("[routing]\nbalance_factor = 0.5\n{ONE}"), 2, 18, &["routing.balance_factor must be a number from 1.0 to 100.0", "not 0.5"]),
        (format!("[routing]\nsticky_cookie = {{ name = \"a b\" }}\n{ONE}"), 2, 26, &["routing.sticky_cookie.name \"a b\" is not a valid cookie name"]),
        (format!("[routing]\nsticky_cookie = {{ name = \"sid\", max_age = \"soon\" }}\n{ONE}"), 2, 43, &["routing.sticky_cookie.max_age: \"soon\" is not a duration"]),
        (format!("[routing]\ntable_size = 65537\n{ONE}"), 2, 14, &["routing.table_size only applies to algorithm = \"maglev\", not \"ring\""]),
        (format!("[routing]\nalgorithm = \"rendezvous\"\ntable_size = 65537\n{ONE}"), 3, 14, &["not \"rendezvous\""]),
        (format!("[routing]\nalgorithm = \"maglev\"\ntable_size = 65536\n{ONE}"), 3, 14, &["routing.table_size (65536) is not a prime; use a prime such as 65537"]),
        // 200 backends need at least 2000 slots: the next prime is 2003.
        (format!("[routing]\nalgorithm = \"maglev\"\ntable_size = 1009\n{p200}"), 3, 14, &["(1009) is smaller than 10 × 200 backends; use a prime such as 2003"]),
        // Not a prime and too small: the suggestion covers both.
        (format!("[routing]\nalgorithm = \"maglev\"\ntable_size = 1000\n{p200}"), 3, 14, &["not a prime", "2003"]),
        // The default is checked against the pool too, at the algorithm.
        (format!("[routing]\nalgorithm = \"maglev\"\n{}", pool(6554)), 2, 13, &["(default 65537) is smaller than 10 × 6554 backends", "65543"]),
        (format!("[routing]\nalgorithm = \"maglev\"\ntable_size = 1\n{ONE}"), 3, 14, &["routing.table_size must be from 2 to"]),
        (format!("[routing]\nalgorithm = \"maglev\"\ntable_size = 99999999999\n{ONE}"), 3, 14, &["not 99999999999"]),
        (format!("[listen]\naddress = \"localhost:80\"\n{ONE}"), 2, 11, &["listen.address: \"localhost:80\" is not an IP:port address"]),
        (format!("[listen]\ntls_address = \"127.0.0.1:8443\"\n{ONE}"), 2, 15, &["listen.tls_address needs listen.tls"]),
        (format!("[listen]\ntls = {{ cert = \"c\", key = \"k\" }}\ntls_address = \"127.0.0.1:8080\"\n{ONE}"), 3, 15, &["listen.tls_address 127.0.0.1:8080 and listen.address 127.0.0.1:8080 overlap"]),
        (format!("[listen]\ntls = {{ cert = \"c.pem\" }}\n{ONE}"), 2, 7, &["missing field `key`"]),
        (format!("[listen]\ntls = {{ cert = \" \", key = \"k\" }}\n{ONE}"), 2, 16, &["listen.tls.cert must be a file path"]),
        (format!("[admin]\naddress = \"127.0.0.1:8080\"\n{ONE}"), 2, 11, &["admin.address 127.0.0.1:8080 and the listen address 127.0.0.1:8080 overlap"]),
        // A wildcard takes the port on every address of its family (and
        // IPv6's on IPv4 too).
        (format!("[listen]\naddress = \"0.0.0.0:8000\"\n[admin]\naddress = \"127.0.0.1:8000\"\n{ONE}"), 4, 11, &["overlap"]),
        (format!("[listen]\naddress = \"[::]:8000\"\n[admin]\naddress = \"127.0.0.1:8000\"\n{ONE}"), 4, 11, &["overlap"]),
        (format!("[listen]\ntls = {{ cert = \"c\", key = \"k\" }}\naddress = \"0.0.0.0:80\"\ntls_address = \"127.0.0.1:80\"\n{ONE}"), 4, 15, &["overlap"]),
        ("[[backend]]\nname = \"self\"\naddress = \"127.0.0.1:8080\"\n".into(), 3, 11, &["the proxy's own address 127.0.0.1:8080"]),
        ("[listen]\naddress = \"0.0.0.0:80\"\n[[backend]]\nname = \"self\"\naddress = \"127.0.0.1:80\"\n".into(), 5, 11, &["loop back into the proxy"]),
        (format!("{ONE}[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:09001\"\n"), 6, 11, &["duplicate backend address \"127.0.0.1:09001\" (first used on line 3)"]),
        ("[[backend]]\nname = \"a\"\naddress = \"[::1]:1\"\n[[backend]]\nname = \"b\"\naddress = \"[0:0:0:0:0:0:0:1]:1\"\n".into(), 6, 11, &["duplicate backend address"]),
        (format!("[health]\nfall = 3\nfall = 4\n{ONE}"), 3, 1, &["duplicate key `fall`"]),
        (format!("[listen]\ntls = \"x\"\n{ONE}"), 2, 7, &["listen.tls", "expected an inline table { cert, key }"]),
    ];
    for (text, line, column, words) in rows {
        let e = from_toml_str(&text, "t.toml").expect_err(&text);
        let got = (e.line, e.column);
        assert_eq!(got, (line, column), "{e}\nfor:\n{text}");
        for w in words {
            assert!(e.message.contains(w), "{e:?} lacks {w:?}\nfor:\n{text}");
        }
        assert_eq!(
            e.to_string(),
            format!("t.toml:{line}:{column}: {}", e.message)
        );
    }
}

#[test]
fn small_tables_and_stray_vnodes_warn() {
    let warnings = |text: String| parse(&text).warnings;
    let w = warnings(format!(
        "[routing]\nalgorithm = \"maglev\"\ntable_size = 2003\n{}",
        pool(200)
    ));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("t.toml:3:14: routing.table_size (2003) gives each of the 200 backends only about 10 slots"), "{w:?}");
    assert!(w[0].contains("20011"), "{w:?}");
    // 100 × N or more: no warning.
    let w = warnings(format!(
        "[routing]\nalgorithm = \"maglev\"\ntable_size = 20011\n{}",
        pool(200)
    ));
    assert!(w.is_empty(), "{w:?}");
    let w = warnings(format!(
        "[routing]\nalgorithm = \"rendezvous\"\nvnodes = 160\n{ONE}"
    ));
    assert_eq!(w, ["t.toml:3:10: routing.vnodes only applies to algorithm = \"ring\"; rendezvous ignores it"]);
}

#[test]
fn key_sources_parse() {
    assert_eq!(
        key_source("header:X-Id"),
        Ok(KeySource::Header("x-id".into()))
    );
    assert_eq!(
        key_source("cookie:Sid"),
        Ok(KeySource::Cookie("Sid".into()))
    );
    assert_eq!(key_source("client-ip"), Ok(KeySource::ClientIp));
    for bad in ["header:", "body:x", "cookie:a b", "x", "client_ip"] {
        assert!(key_source(bad).is_err(), "{bad}");
    }
}

#[test]
fn host_port_forms() {
    for ok in [
        "127.0.0.1:80",
        "[::1]:8080",
        "app-1.internal:9000",
        "localhost:1",
    ] {
        assert!(validate_host_port(ok).is_ok(), "{ok}");
    }
    for bad in [
        "127.0.0.1",
        "host:0",
        ":80",
        "a..b:80",
        "x:99999",
        "a b:80",
        "[::1]:0",
    ] {
        assert!(validate_host_port(bad).is_err(), "{bad}");
    }
}
