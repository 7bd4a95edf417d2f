//! `stickylb stdio` on the real binary: SPEC.md's protocol lines, routing
//! that agrees with `stickylb route` for each algorithm, `test_remap`'s
//! invariants, and an error reply (and an unbroken loop) for malformed lines.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use stickylb::ring::{degrees, Algorithm, Member, Ring};

/// Runs `stickylb stdio` on `input`; returns the replies, one per line.
fn talk(input: &str) -> Vec<Value> {
    let out = run(input);
    assert!(out.status.success(), "exit {:?}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 replies");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

fn run(input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .arg("stdio")
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start stickylb stdio");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write requests");
    drop(stdin);
    child.wait_with_output().expect("stickylb stdio ends")
}

/// One request line from a body.
fn line(body: Value) -> String {
    json!({"src": "client", "dest": "lb", "body": body}).to_string() + "\n"
}

fn lines(bodies: impl IntoIterator<Item = Value>) -> String {
    bodies.into_iter().map(line).collect()
}

/// The ring `stdio` builds for an `init` (seed 0, weights 1).
fn ring(algorithm: &str, backends: &[String]) -> Ring {
    let algorithm = match algorithm {
        "consistent-hash" => Algorithm::Ring { vnodes: 160 },
        "maglev" => Algorithm::Maglev { table_size: 65537 },
        "rendezvous" => Algorithm::Rendezvous,
        other => panic!("{other}"),
    };
    let members = backends
        .iter()
        .map(|b| Member {
            name: b.as_str().into(),
            weight: std::num::NonZeroU32::MIN,
        })
        .collect();
    Ring::build(members, algorithm, 0).expect("ring builds")
}

/// What `stickylb route` says for `keys` with a config of `backends` and
/// the given algorithm.
fn route(algorithm: &str, backends: &[String], keys: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_algorithm = match algorithm {
        "consistent-hash" => "ring",
        other => other,
    };
    let mut text = format!("[routing]\nalgorithm = \"{config_algorithm}\"\n");
    for (i, b) in backends.iter().enumerate() {
        text += &format!(
            "[[backend]]\nname = \"{b}\"\naddress = \"127.0.0.1:{}\"\n",
            9000 + i
        );
    }
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .arg("route")
        .arg("--config")
        .arg(&path)
        .args(keys)
        .env("RUST_LOG", "off")
        .output()
        .expect("run stickylb route");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .zip(keys)
        .map(|(l, k)| {
            l.strip_prefix(&format!("{k} -> "))
                .unwrap_or_else(|| panic!("{l:?}"))
                .to_string()
        })
        .collect()
}

fn assert_reply(reply: &Value, kind: &str, in_reply_to: i64) {
    assert_eq!(reply["src"], "lb", "{reply}");
    assert_eq!(reply["dest"], "client", "{reply}");
    assert_eq!(reply["body"]["type"], kind, "{reply}");
    assert_eq!(reply["body"]["in_reply_to"], in_reply_to, "{reply}");
}

fn assert_error(reply: &Value, in_reply_to: Option<i64>, code: i64, about: &str) {
    let body = &reply["body"];
    assert_eq!(body["type"], "error", "{reply}");
    match in_reply_to {
        Some(id) => assert_eq!(body["in_reply_to"], id, "{reply}"),
        None => assert!(body.get("in_reply_to").is_none(), "{reply}"),
    }
    assert_eq!(body["code"], code, "{reply}");
    let text = body["text"].as_str().expect("text is a string");
    assert!(text.contains(about), "want {about:?} in {text:?}");
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The object's keys in the order they appear in the reply's text.
fn keys_in_text_order(raw: &str, field: &str, keys: &[String]) -> Vec<String> {
    let start = raw.find(&format!("\"{field}\":{{")).expect("field present");
    let object = &raw[start..start + raw[start..].find('}').expect("object ends")];
    let mut found: Vec<(usize, String)> = keys
        .iter()
        .map(|k| {
            let at = object
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} in {object}"));
            (at, k.clone())
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, k)| k).collect()
}

// ---------------------------------------------------------------- tests

/// The three lines of SPEC.md, verbatim.
#[test]
fn spec_lines() {
    let input = concat!(
        r#"{"src":"client","dest":"lb","body":{"type":"init","msg_id":1,"backends":["b1","b2","b3"],"algorithm":"consistent-hash"}}"#,
        "\n",
        r#"{"src":"client","dest":"lb","body":{"type":"http_request","msg_id":2,"client_id":"alice","path":"/api"}}"#,
        "\n",
        r#"{"src":"client","dest":"lb","body":{"type":"test_remap","msg_id":3,"new_backend":"b4","clients":["c1","c2"]}}"#,
        "\n",
    );
    let out = run(input);
    assert!(out.status.success());
    let raw = String::from_utf8(out.stdout).unwrap();
    let replies: Vec<Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 3, "{raw}");

    assert_reply(&replies[0], "init_ok", 1);
    assert_eq!(replies[0]["body"].as_object().unwrap().len(), 2);

    let pool: Vec<String> = ["b1", "b2", "b3"].map(String::from).to_vec();
    let r = ring("consistent-hash", &pool);
    let h = r.hash(b"alice");
    assert_reply(&replies[1], "http_response", 2);
    assert_eq!(
        replies[1]["body"]["backend"],
        &*r.members()[r.owner(h)].name
    );
    assert_eq!(replies[1]["body"]["hash_ring_position"], degrees(h));

    let remap = &replies[2]["body"];
    assert_reply(&replies[2], "test_remap_ok", 3);
    assert_eq!(remap["total"], 2);
    let remapped = strings(&remap["remapped"]);
    assert_eq!(remap["remapped_count"], remapped.len());
    let clients = ["c1", "c2"].map(String::from).to_vec();
    assert_eq!(keys_in_text_order(&raw, "before", &clients), clients);
    assert_eq!(keys_in_text_order(&raw, "after", &clients), clients);
    for c in &clients {
        let (before, after) = (&remap["before"][c], &remap["after"][c]);
        assert_eq!(remapped.contains(c), before != after, "{c}");
        if before != after {
            assert_eq!(after, "b4", "a ring moves keys only to the new backend");
        }
    }
}

/// For each algorithm: every answer agrees with `stickylb route` on a config
/// of the same pool, before and after `test_remap` adds a backend for good.
#[test]
fn routing_agrees_with_route_for_every_algorithm() {
    let clients: Vec<String> = (0..150).map(|i| format!("client-{i}")).collect();
    for algorithm in ["consistent-hash", "maglev", "rendezvous"] {
        let pool: Vec<String> = (1..=5).map(|i| format!("app-{i}")).collect();
        let mut grown = pool.clone();
        grown.push("app-6".into());

        let mut bodies =
            vec![json!({"type": "init", "msg_id": 1, "backends": pool, "algorithm": algorithm})];
        for (i, c) in clients.iter().enumerate() {
            bodies.push(
                json!({"type": "http_request", "msg_id": 100 + i, "client_id": c, "path": "/"}),
            );
        }
        bodies.push(
            json!({"type": "test_remap", "msg_id": 2, "new_backend": "app-6", "clients": clients}),
        );
        for (i, c) in clients.iter().enumerate() {
            bodies.push(json!({"type": "http_request", "msg_id": 1000 + i, "client_id": c}));
        }
        let replies = talk(&lines(bodies));
        assert_eq!(replies.len(), 2 + 2 * clients.len(), "{algorithm}");
        assert_reply(&replies[0], "init_ok", 1);

        let before_route = route(algorithm, &pool, &clients);
        let after_route = route(algorithm, &grown, &clients);
        let answers = |from: usize, first_id: usize| -> Vec<String> {
            replies[from..from + clients.len()]
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    assert_reply(r, "http_response", (first_id + i) as i64);
                    let pos = r["body"]["hash_ring_position"].as_u64().unwrap();
                    assert!(pos < 360, "{r}");
                    r["body"]["backend"].as_str().unwrap().to_string()
                })
                .collect()
        };
        assert_eq!(answers(1, 100), before_route, "{algorithm} before");
        assert_eq!(
            answers(2 + clients.len(), 1000),
            after_route,
            "{algorithm} after"
        );

        let remap = &replies[1 + clients.len()];
        assert_reply(remap, "test_remap_ok", 2);
        let body = &remap["body"];
        assert_eq!(body["total"], clients.len());
        let remapped = strings(&body["remapped"]);
        assert_eq!(body["remapped_count"], remapped.len());
        assert!(!remapped.is_empty(), "{algorithm}: someone moves to app-6");
        let mut expected_moves = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(body["before"][c], before_route[i], "{algorithm} {c}");
            assert_eq!(body["after"][c], after_route[i], "{algorithm} {c}");
            if before_route[i] != after_route[i] {
                expected_moves.push(c.clone());
            }
        }
        assert_eq!(remapped, expected_moves, "{algorithm}: in the order given");
        if algorithm != "maglev" {
            for c in &remapped {
                assert_eq!(
                    body["after"][c], "app-6",
                    "{algorithm}: {c} moved elsewhere"
                );
            }
        }
    }
}

#[test]
fn malformed_lines_get_errors_and_the_loop_goes_on() {
    let mut input = String::new();
    input += "this is not json\n";
    input += "{\"src\":\"client\",\"dest\":\"lb\",\"body\":{\"type\":\"init\"\n"; // cut short
    input += "[1,2,3]\n";
    input += &line(json!({"type": "http_request", "client_id": "x"})); // no msg_id
    input += &line(json!({"type": "http_request", "msg_id": "seven", "client_id": "x"}));
    input += &json!({"src": "client", "dest": "lb"}).to_string();
    input += "\n";
    input += &line(json!({"type": "http_request", "msg_id": 10, "client_id": "x"})); // before init
    input += &line(json!({"type": "test_remap", "msg_id": 11, "new_backend": "b", "clients": []}));
    input += &line(json!({"type": "teleport", "msg_id": 12}));
    input += &line(json!({"msg_id": 13}));
    input += &line(json!({"type": "init", "msg_id": 14}));
    input += &line(json!({"type": "init", "msg_id": 15, "backends": []}));
    input += &line(json!({"type": "init", "msg_id": 16, "backends": ["a", "b", "a"]}));
    input += &line(json!({"type": "init", "msg_id": 17, "backends": ["a", 2]}));
    input += &line(json!({"type": "init", "msg_id": 18, "backends": ["a"], "algorithm": "random"}));
    input += &line(json!({"type": "init", "msg_id": 19, "backends": ["a", "b"]}));
    input += "\n   \n"; // blank lines are skipped
    input += &line(json!({"type": "http_request", "msg_id": 20}));
    input += &line(json!({"type": "http_request", "msg_id": 21, "client_id": 42}));
    input += &line(json!({"type": "test_remap", "msg_id": 22, "clients": ["x"]}));
    input += &line(json!({"type": "test_remap", "msg_id": 23, "new_backend": "c"}));
    input += &line(json!({"type": "test_remap", "msg_id": 24, "new_backend": "a", "clients": []}));
    input += &line(json!({"type": "http_request", "msg_id": 25, "client_id": "x"}));
    let replies = talk(&input);
    let expected: [(Option<i64>, i64, &str); 22] = [
        (None, 12, "not valid JSON"),
        (None, 12, "not valid JSON"),
        (None, 12, "JSON object"),
        (None, 12, "msg_id"),
        (None, 12, "msg_id"),
        (None, 12, "body"),
        (Some(10), 11, "init"),
        (Some(11), 11, "init"),
        (Some(12), 10, "teleport"),
        (Some(13), 12, "type"),
        (Some(14), 12, "backends"),
        (Some(15), 12, "empty"),
        (Some(16), 12, "duplicate backend name \"a\""),
        (Some(17), 12, "list of strings"),
        (Some(18), 10, "random"),
        (Some(19), 0, ""),
        (Some(20), 12, "client_id"),
        (Some(21), 12, "client_id"),
        (Some(22), 12, "new_backend"),
        (Some(23), 12, "clients"),
        (Some(24), 12, "already in the pool"),
        (Some(25), 0, ""),
    ];
    assert_eq!(replies.len(), expected.len(), "{replies:#?}");
    for (reply, &(id, code, about)) in replies.iter().zip(&expected) {
        match (id, code) {
            (Some(19), 0) => assert_reply(reply, "init_ok", 19),
            (Some(25), 0) => assert_reply(reply, "http_response", 25),
            _ => assert_error(reply, id, code, about),
        }
        assert_eq!(reply["src"], "lb", "{reply}");
        assert_eq!(reply["dest"], "client", "{reply}");
    }
}

#[test]
fn a_second_init_starts_afresh_and_remap_lasts() {
    let pool = ["b1", "b2", "b3"];
    let clients: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut bodies = vec![
        json!({"type": "init", "msg_id": 1, "backends": pool, "algorithm": "rendezvous"}),
        json!({"type": "test_remap", "msg_id": 2, "new_backend": "b4", "clients": clients}),
        // b4 is in the pool now: adding it again is a duplicate.
        json!({"type": "test_remap", "msg_id": 3, "new_backend": "b4", "clients": []}),
        json!({"type": "init", "msg_id": 4, "backends": pool, "algorithm": "rendezvous"}),
        json!({"type": "test_remap", "msg_id": 5, "new_backend": "b4", "clients": clients}),
    ];
    bodies.push(json!({"type": "init", "msg_id": 6, "backends": ["solo"], "algorithm": "maglev"}));
    bodies.push(json!({"type": "http_request", "msg_id": 7, "client_id": "anyone"}));
    let replies = talk(&lines(bodies));
    assert_eq!(replies.len(), 7);
    assert_reply(&replies[1], "test_remap_ok", 2);
    assert_error(&replies[2], Some(3), 12, "already in the pool");
    assert_reply(&replies[3], "init_ok", 4);
    assert_reply(&replies[4], "test_remap_ok", 5);
    // The same pool again gives the same remap.
    for field in ["remapped", "before", "after", "remapped_count", "total"] {
        assert_eq!(
            replies[1]["body"][field], replies[4]["body"][field],
            "{field}"
        );
    }
    assert_eq!(replies[6]["body"]["backend"], "solo");
}

#[test]
fn duplicate_clients_count_once_in_order() {
    let replies = talk(&lines([
        json!({"type": "init", "msg_id": 1, "backends": ["a", "b"]}),
        json!({"type": "test_remap", "msg_id": 2, "new_backend": "c", "clients": ["x", "y", "x", "z", "y"]}),
    ]));
    let body = &replies[1]["body"];
    assert_eq!(body["total"], 3);
    assert_eq!(body["before"].as_object().unwrap().len(), 3);
    let remapped = strings(&body["remapped"]);
    assert_eq!(
        remapped.iter().collect::<HashSet<_>>().len(),
        remapped.len()
    );
}

/// Each reply is flushed as soon as it is written: a client can wait for it
/// before sending the next line.
#[test]
fn replies_come_one_at_a_time_and_eof_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .arg("stdio")
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start stickylb stdio");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut reply = String::new();
    for (i, body) in [
        json!({"type": "init", "msg_id": 1, "backends": ["b1", "b2"], "algorithm": "maglev"}),
        json!({"type": "http_request", "msg_id": 2, "client_id": "alice"}),
        json!({"type": "bogus", "msg_id": 3}),
    ]
    .into_iter()
    .enumerate()
    {
        stdin.write_all(line(body).as_bytes()).unwrap();
        stdin.flush().unwrap();
        reply.clear();
        stdout.read_line(&mut reply).unwrap();
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["body"]["in_reply_to"], i + 1, "{reply}");
    }
    // A last line without a newline still gets its reply.
    stdin
        .write_all(
            json!({"src": "client", "dest": "lb", "body": {"type": "http_request", "msg_id": 4, "client_id": "bob"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    drop(stdin);
    reply.clear();
    stdout.read_line(&mut reply).unwrap();
    assert!(reply.contains("\"in_reply_to\":4"), "{reply}");
    assert!(child.wait().unwrap().success());
}
