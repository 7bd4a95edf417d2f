//! `stickylb simulate` from the command line: deterministic for a seed,
//! stickiness beats round robin on a skewed workload, the keyspace moved
//! is what `stickylb diff` says, the access-log replay counts every line,
//! and the plot is SVG.

use std::process::Command;

fn pool(n: usize, extra: &str) -> String {
    let mut s = format!("[routing]\n{extra}\n");
    for i in 0..n {
        s.push_str(&format!(
            "[[backend]]\nname = \"b{i}\"\naddress = \"10.0.0.{}:80\"\n",
            i + 1
        ));
    }
    s
}

fn stickylb(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn rate(v: &serde_json::Value, name: &str, field: &str) -> f64 {
    let algos = v["algorithms"].as_array().unwrap();
    let a = algos
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name}: {v}"));
    a[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}.{field}: {a}"))
}

#[test]
fn stickiness_beats_round_robin_and_moves_what_diff_says() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&a, pool(8, "balance_factor = 1.25")).unwrap();
    std::fs::write(&b, pool(9, "balance_factor = 1.25")).unwrap();
    let plot = dir.path().join("hit.svg");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let args = [
        "simulate",
        "--config",
        a,
        "--to",
        b,
        "--keys",
        "20000",
        "--requests",
        "200000",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ];
    let v = stickylb(&args);
    assert_eq!(v["requests"], 200_000);
    let names: Vec<&str> = v["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ring",
            "maglev",
            "rendezvous",
            "ring + bounded loads 1.25",
            "round-robin"
        ]
    );
    // Each backend caches 2% of the keys: sticky routing serves the hot
    // keys from one cache each, round robin from all of them.
    let ring = rate(&v, "ring", "hit_rate");
    let rr = rate(&v, "round-robin", "hit_rate");
    assert!(ring > rr + 0.15, "ring {ring} vs round robin {rr}");
    // The same seed gives the same figures.
    assert_eq!(stickylb(&args), v);
    // The keyspace moved is exactly what `diff` computes.
    let diff = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .args(["diff", a, b, "--json"])
        .output()
        .unwrap();
    let diff: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert_eq!(
        rate(&v, "ring", "moved_fraction"),
        diff["moved_fraction"].as_f64().unwrap()
    );
    // The plot is an SVG document with a line per algorithm.
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("round-robin") && svg.contains("pool change"));
    // PNG too, its text drawn with the embedded font (no system fonts).
    let png = dir.path().join("hit.png");
    let out = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .args([
            "simulate",
            "--config",
            a,
            "--to",
            b,
            "--keys",
            "2000",
            "--requests",
            "20000",
        ])
        .arg("--plot")
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn the_access_log_replays_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, pool(3, "")).unwrap();
    let log = dir.path().join("access.log");
    let lines: String = (0..500)
        .map(|i| {
            format!(
                "{{\"status\":200,\"key_hash\":{},\"key_source\":\"header\"}}\n",
                (i % 50) * 7919
            )
        })
        .collect();
    std::fs::write(&log, lines).unwrap();
    let v = stickylb(&[
        "simulate",
        "--config",
        config.to_str().unwrap(),
        "--replay",
        log.to_str().unwrap(),
        "--cache",
        "100",
        "--json",
    ]);
    assert_eq!(v["requests"], 500);
    assert_eq!(v["keys"], 50);
    // 50 keys, room for all: each misses once, on its one backend.
    assert!((rate(&v, "ring", "hit_rate") - 450.0 / 500.0).abs() < 1e-9);
}

/// Odd inputs end in one sentence and exit 1 (2 for a flag out of its
/// range), never a hang, a panic or an abort.
#[test]
fn odd_inputs_are_refused_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, pool(3, "")).unwrap();
    let c = config.to_str().unwrap();
    let long_line = dir.path().join("long.txt");
    std::fs::write(&long_line, "k".repeat(100_000)).unwrap();
    let cases: [(&[&str], i32); 10] = [
        (&["simulate", "-c", c, "--to", c, "--rate", "1e-20"], 1),
        (&["simulate", "-c", c, "--to", c, "--slow-start", "1ns"], 1),
        (&["simulate", "-c", c, "--slow-start", "10s"], 1),
        (&["simulate", "-c", c, "--zipf", "inf"], 1),
        (&["simulate", "-c", c, "--zipf=-1"], 1),
        (
            &["simulate", "-c", c, "--requests", "18446744073709551615"],
            1,
        ),
        (
            &[
                "simulate",
                "-c",
                c,
                "--keys",
                "4294967295",
                "--requests",
                "10",
            ],
            1,
        ),
        (
            &["simulate", "-c", c, "--replay", long_line.to_str().unwrap()],
            1,
        ),
        (&["simulate", "-c", c, "--plot", "x.gif"], 1),
        (&["run", "-c", c, "--threads", "100000"], 2),
    ];
    for (args, code) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_stickylb"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A cache larger than the keys holds them all, without allocating more.
    let v = stickylb(&[
        "simulate",
        "-c",
        c,
        "--keys",
        "100",
        "--requests",
        "1000",
        "--cache",
        "18446744073709551615",
        "--json",
    ]);
    assert_eq!(v["cache"], 100);
}
