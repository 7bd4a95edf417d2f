//! The config parser and its rules, case by case.

use super::parse::{default_keys, key_source, validate_host_port};
use super::*;

fn err(text: &str) -> ConfigError {
    from_toml_str(text, "t.toml").expect_err("should be rejected")
}

const ONE: &str = "[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n";

#[test]
fn minimal_file_gets_defaults() {
    let c = from_toml_str(ONE, "t.toml").unwrap();
    assert_eq!(c.listen.address, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.routing.key, default_keys());
    assert_eq!(c.routing.algorithm, AlgorithmConfig::Ring { vnodes: 160 });
    assert_eq!(c.timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.backends[0].weight.get(), 1);
}

#[test]
fn shipped_config_parses() {
    let text = include_str!("../../config.toml");
    let c = from_toml_str(text, "config.toml").unwrap();
    assert!(c.backends.len() >= 3);
}

#[test]
fn errors_name_line_and_column() {
    let e = err(&format!("{ONE}weight = 0\n"));
    assert_eq!((e.line, e.column), (4, 10), "{e}");
    assert!(e.message.contains("weight"), "{e}");
    let e = err("[routing]\nbogus = 1\n");
    assert_eq!(e.line, 2, "{e}");
    let e = err(&format!(
        "{ONE}[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9002\"\n"
    ));
    assert_eq!((e.line, e.column), (5, 8), "{e}");
    assert!(e.message.contains("duplicate backend name"), "{e}");
    let e = err(&format!("[timeouts]\nconnect = \"fast\"\n{ONE}"));
    assert_eq!(e.line, 2, "{e}");
    let e = err("[[backend]]\nname = \"a\"\naddress = \"nowhere\"\n");
    assert_eq!(e.line, 3, "{e}");
    assert!(err("").message.contains("pool is empty"));
    let e = err(&format!(
        "[routing]\nsticky_cookie = {{ name = \"a b\" }}\n{ONE}"
    ));
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("not a valid cookie name"), "{e}");
    let e = err(&format!(
        "[routing]\nsticky_cookie = {{ name = \"sid\", max_age = \"soon\" }}\n{ONE}"
    ));
    assert!(e.message.contains("max_age"), "{e}");
    let e = err(&format!(
        "[listen]\ntls_address = \"127.0.0.1:8443\"\n{ONE}"
    ));
    assert_eq!((e.line, e.column), (2, 15), "{e}");
    let e = err(&format!("[listen]\ntls = {{ cert = \"c.pem\" }}\n{ONE}"));
    assert_eq!(e.line, 2, "{e}");
    let e = err(&format!("[health]\nfall = 0\n{ONE}"));
    assert_eq!((e.line, e.column), (2, 8), "{e}");
    let e = err(&format!("[limits]\nmax_request_header_bytes = 100\n{ONE}"));
    assert_eq!(e.line, 2, "{e}");
    let e = err(&format!("[routing]\nbalance_factor = 0.5\n{ONE}"));
    assert_eq!(e.line, 2, "{e}");
    assert_eq!(
        e.to_string(),
        format!("t.toml:{}:{}: {}", e.line, e.column, e.message)
    );
}

/// `n` backends named b0.. on ports 9000..
fn pool(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[backend]]\nname = \"b{i}\"\naddress = \"127.0.0.1:{}\"\n",
                9000 + i
            )
        })
        .collect()
}

#[test]
fn algorithms_parse() {
    let parse = |routing: &str| from_toml_str(&format!("[routing]\n{routing}\n{ONE}"), "t.toml");
    let c = parse("algorithm = \"maglev\"").unwrap();
    assert_eq!(
        c.routing.algorithm,
        AlgorithmConfig::Maglev { table_size: 65537 }
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = parse("algorithm = \"maglev\"\ntable_size = 1009").unwrap();
    assert_eq!(
        c.routing.algorithm,
        AlgorithmConfig::Maglev { table_size: 1009 }
    );
    let c = parse("algorithm = \"rendezvous\"").unwrap();
    assert_eq!(c.routing.algorithm, AlgorithmConfig::Rendezvous);
    let c = parse("algorithm = \"ring\"\nvnodes = 40").unwrap();
    assert_eq!(c.routing.algorithm, AlgorithmConfig::Ring { vnodes: 40 });
    let e = parse("algorithm = \"jump\"").unwrap_err();
    assert_eq!((e.line, e.column), (2, 13), "{e}");
}

#[test]
fn table_size_errors_suggest_a_prime() {
    let e = err(&format!(
        "[routing]\nalgorithm = \"maglev\"\ntable_size = 65536\n{ONE}"
    ));
    assert_eq!((e.line, e.column), (3, 14), "{e}");
    assert!(e.message.contains("not a prime"), "{e}");
    assert!(e.message.contains("65537"), "{e}");

    // 200 backends need at least 2000 slots: the next prime is 2003.
    let e = err(&format!(
        "[routing]\nalgorithm = \"maglev\"\ntable_size = 1009\n{}",
        pool(200)
    ));
    assert_eq!((e.line, e.column), (3, 14), "{e}");
    assert!(e.message.contains("smaller than 10 × 200 backends"), "{e}");
    assert!(e.message.contains("2003"), "{e}");
    // Not a prime and too small: the suggestion covers both.
    let e = err(&format!(
        "[routing]\nalgorithm = \"maglev\"\ntable_size = 1000\n{}",
        pool(200)
    ));
    assert!(e.message.contains("2003"), "{e}");

    // The default is checked against the pool too, at the algorithm.
    let e = err(&format!(
        "[routing]\nalgorithm = \"maglev\"\n{}",
        pool(6554)
    ));
    assert_eq!((e.line, e.column), (2, 13), "{e}");
    assert!(e.message.contains("default 65537"), "{e}");
    assert!(e.message.contains("65543"), "{e}");

    for bad in ["0", "-7", "1", "99999999999"] {
        let e = err(&format!(
            "[routing]\nalgorithm = \"maglev\"\ntable_size = {bad}\n{ONE}"
        ));
        assert_eq!(e.line, 3, "{e}");
    }
    let e = err(&format!("[routing]\ntable_size = 65537\n{ONE}"));
    assert!(
        e.message.contains("only applies to algorithm = \"maglev\""),
        "{e}"
    );
    assert_eq!(e.line, 2, "{e}");
    let e = err(&format!(
        "[routing]\nalgorithm = \"rendezvous\"\ntable_size = 65537\n{ONE}"
    ));
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn small_tables_and_stray_vnodes_warn() {
    let c = from_toml_str(
        &format!(
            "[routing]\nalgorithm = \"maglev\"\ntable_size = 2003\n{}",
            pool(200)
        ),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert!(w.starts_with("t.toml:3:14: "), "{w}");
    assert!(w.contains("20011"), "{w}");
    // 100 × N or more: no warning.
    let c = from_toml_str(
        &format!(
            "[routing]\nalgorithm = \"maglev\"\ntable_size = 20011\n{}",
            pool(200)
        ),
        "t.toml",
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let c = from_toml_str(
        &format!("[routing]\nalgorithm = \"rendezvous\"\nvnodes = 160\n{ONE}"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("t.toml:3:"), "{:?}", c.warnings);
    assert!(c.warnings[0].contains("vnodes"), "{:?}", c.warnings);
}

#[test]
fn tls_and_sticky_cookie_parse() {
    let c = from_toml_str(
        &format!(
            "[listen]\naddress = \"127.0.0.1:80\"\ntls = {{ cert = \"tls/c.pem\", key = \"/k.pem\" }}\n\
             [routing]\nsticky_cookie = {{ name = \"lb\" }}\n[timeouts]\nupgraded_idle = \"5m\"\n{ONE}"
        ),
        "t.toml",
    )
    .unwrap();
    let tls = c.listen.tls.as_ref().unwrap();
    assert_eq!(tls.cert, PathBuf::from("tls/c.pem"));
    assert_eq!(tls.key, PathBuf::from("/k.pem"));
    assert_eq!(c.listen.tls_listener(), Some(c.listen.address));
    assert_eq!(c.listen.plain_listener(), None);
    let cookie = c.routing.sticky_cookie.unwrap();
    assert_eq!(
        (cookie.name.as_str(), cookie.max_age),
        ("lb", DEFAULT_COOKIE_MAX_AGE)
    );
    assert_eq!(c.timeouts.upgraded_idle, Duration::from_secs(300));
    let c = from_toml_str(ONE, "t.toml").unwrap();
    assert_eq!(c.timeouts.upgraded_idle, Duration::from_secs(3600));
    assert_eq!(c.listen.plain_listener(), Some(c.listen.address));
    let both = from_toml_str(
        &format!("[listen]\ntls = {{ cert = \"c\", key = \"k\" }}\ntls_address = \"127.0.0.1:8443\"\n{ONE}"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(both.listen.plain_listener(), Some(both.listen.address));
    assert_eq!(
        both.listen.tls_listener(),
        Some("127.0.0.1:8443".parse().unwrap())
    );
}

#[test]
fn key_sources_parse() {
    assert_eq!(
        key_source("header:X-Id"),
        Ok(KeySource::Header("x-id".into()))
    );
    assert_eq!(key_source("client-ip"), Ok(KeySource::ClientIp));
    assert!(key_source("header:").is_err());
    assert!(key_source("body:x").is_err());
    assert!(key_source("cookie:a b").is_err());
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
    for bad in ["127.0.0.1", "host:0", ":80", "a..b:80", "x:99999", "a b:80"] {
        assert!(validate_host_port(bad).is_err(), "{bad}");
    }
}
