//! `stickylb stdio`: the JSON-lines routing protocol. One request object a
//! line in, one reply a line out, in order, flushed after each. Routing is
//! the same `Ring` the proxy uses (seed 0); no sockets, no tokio.
//!
//! ```text
//! {"src":"client","dest":"lb","body":{"type":"init","msg_id":1,"backends":["b1","b2"],"algorithm":"consistent-hash"}}
//! {"src":"lb","dest":"client","body":{"type":"init_ok","in_reply_to":1}}
//! ```
//!
//! Error codes (those of the Maelstrom protocol this envelope follows):
//! 10 not supported (unknown `type` or `algorithm`), 11 temporarily
//! unavailable (a request before `init`), 12 malformed request (bad JSON,
//! missing or mistyped field, empty or duplicate backend names).

use crate::ring::{degrees, Algorithm, Member, Ring, DEFAULT_TABLE_SIZE};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Number, Value};
use std::io::{self, BufRead, Write};
use std::num::NonZeroU32;

/// The request's `type` or `algorithm` is not one this side knows.
pub const NOT_SUPPORTED: u32 = 10;
/// A routing request arrived before `init`.
pub const TEMPORARILY_UNAVAILABLE: u32 = 11;
/// The line is not a well-formed request.
pub const MALFORMED_REQUEST: u32 = 12;

/// Ring points per backend for `consistent-hash`, as in the config.
const VNODES: u32 = crate::config::DEFAULT_VNODES;

/// Serves the protocol until `input` ends. Only I/O errors stop it; a bad
/// line gets an error reply and the loop goes on.
pub fn run(mut input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    let mut session = Session::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let reply = session.handle(&line);
        serde_json::to_writer(&mut output, &reply)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
}

/// The pool as set by the last `init` (and grown by `test_remap`).
#[derive(Default)]
struct Session {
    ring: Option<Ring>,
}

/// A reply line: the request's `src` and `dest` swapped.
#[derive(Serialize)]
struct Envelope {
    src: Value,
    dest: Value,
    body: Body,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Body {
    InitOk {
        in_reply_to: Number,
    },
    HttpResponse {
        in_reply_to: Number,
        backend: String,
        hash_ring_position: u16,
    },
    TestRemapOk {
        in_reply_to: Number,
        remapped: Vec<String>,
        remapped_count: usize,
        total: usize,
        before: Pairs,
        after: Pairs,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        in_reply_to: Option<Number>,
        code: u32,
        text: String,
    },
}

/// A JSON object that keeps its keys in the order given.
struct Pairs(Vec<(String, String)>);

impl Serialize for Pairs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Why a request gets an error reply.
struct Refusal {
    code: u32,
    text: String,
}

fn malformed(text: impl Into<String>) -> Refusal {
    Refusal {
        code: MALFORMED_REQUEST,
        text: text.into(),
    }
}

impl Session {
    fn handle(&mut self, line: &[u8]) -> Envelope {
        let request: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return reply_error(
                    &Value::Null,
                    None,
                    malformed(format!("the line is not valid JSON: {e}")),
                )
            }
        };
        let msg_id = request
            .pointer("/body/msg_id")
            .and_then(Value::as_number)
            .filter(|n| n.is_u64() || n.is_i64())
            .cloned();
        let Some(msg_id) = msg_id else {
            let why = if !request.is_object() {
                "a request must be a JSON object with src, dest and body"
            } else if !request.get("body").is_some_and(Value::is_object) {
                "the request has no body object"
            } else {
                "the body has no integer msg_id"
            };
            return reply_error(&request, None, malformed(why));
        };
        match self.answer(&request["body"], msg_id.clone()) {
            Ok(body) => envelope(&request, body),
            Err(refusal) => reply_error(&request, Some(msg_id), refusal),
        }
    }

    fn answer(&mut self, body: &Value, msg_id: Number) -> Result<Body, Refusal> {
        let kind = body
            .get("type")
            .ok_or_else(|| malformed("the body has no type"))?
            .as_str()
            .ok_or_else(|| malformed("type must be a string"))?;
        match kind {
            "init" => {
                self.ring = Some(init(body)?);
                Ok(Body::InitOk {
                    in_reply_to: msg_id,
                })
            }
            "http_request" => {
                let ring = self.ring()?;
                let client = string_field(body, "client_id")?;
                let hash = ring.hash(client.as_bytes());
                Ok(Body::HttpResponse {
                    in_reply_to: msg_id,
                    backend: ring.members()[ring.owner(hash)].name.to_string(),
                    hash_ring_position: degrees(hash),
                })
            }
            "test_remap" => {
                let ring = self.ring()?;
                let new_backend = string_field(body, "new_backend")?;
                let clients = string_list(body, "clients")?;
                if new_backend.is_empty() {
                    return Err(malformed("new_backend must not be empty"));
                }
                if ring.members().iter().any(|m| *m.name == *new_backend) {
                    return Err(malformed(format!(
                        "backend {new_backend:?} is already in the pool"
                    )));
                }
                let mut members = ring.members().to_vec();
                members.push(member(new_backend));
                let grown = Ring::build(members, ring.algorithm(), ring.seed())
                    .map_err(|e| malformed(format!("cannot add {new_backend:?}: {e}")))?;
                let body = remap(ring, &grown, msg_id, clients);
                self.ring = Some(grown);
                Ok(body)
            }
            other => Err(Refusal {
                code: NOT_SUPPORTED,
                text: format!(
                    "unknown message type {other:?} (expected init, http_request or test_remap)"
                ),
            }),
        }
    }

    fn ring(&self) -> Result<&Ring, Refusal> {
        self.ring.as_ref().ok_or_else(|| Refusal {
            code: TEMPORARILY_UNAVAILABLE,
            text: "no pool yet: send init first".into(),
        })
    }
}

/// The ring an `init` body describes.
fn init(body: &Value) -> Result<Ring, Refusal> {
    let backends = string_list(body, "backends")?;
    if backends.is_empty() {
        return Err(malformed("backends is empty: name at least one backend"));
    }
    let mut sorted = backends.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(malformed(format!("duplicate backend name {:?}", w[0])));
    }
    let algorithm = match body.get("algorithm") {
        None => Algorithm::Ring { vnodes: VNODES },
        Some(a) => match a.as_str() {
            Some("consistent-hash" | "ring") => Algorithm::Ring { vnodes: VNODES },
            Some("maglev") => Algorithm::Maglev {
                table_size: DEFAULT_TABLE_SIZE,
            },
            Some("rendezvous") => Algorithm::Rendezvous,
            Some(other) => {
                return Err(Refusal {
                    code: NOT_SUPPORTED,
                    text: format!(
                    "unknown algorithm {other:?} (expected consistent-hash, maglev or rendezvous)"
                ),
                })
            }
            None => return Err(malformed("algorithm must be a string")),
        },
    };
    let mut members = Vec::with_capacity(backends.len());
    for name in backends {
        if name.is_empty() {
            return Err(malformed("backend names must not be empty"));
        }
        members.push(member(name));
    }
    Ring::build(members, algorithm, 0).map_err(|e| malformed(format!("invalid pool: {e}")))
}

fn member(name: &str) -> Member {
    Member {
        name: name.into(),
        weight: NonZeroU32::MIN,
    }
}

/// Where each client goes before and after the pool grew, in the order
/// given (a client listed twice counts once).
fn remap(old: &Ring, new: &Ring, msg_id: Number, clients: Vec<&str>) -> Body {
    let mut seen = std::collections::HashSet::new();
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut remapped = Vec::new();
    for client in clients {
        if !seen.insert(client) {
            continue;
        }
        let owner = |r: &Ring| {
            r.members()[r.owner(r.hash(client.as_bytes()))]
                .name
                .to_string()
        };
        let (from, to) = (owner(old), owner(new));
        if from != to {
            remapped.push(client.to_string());
        }
        before.push((client.to_string(), from));
        after.push((client.to_string(), to));
    }
    Body::TestRemapOk {
        in_reply_to: msg_id,
        remapped_count: remapped.len(),
        remapped,
        total: before.len(),
        before: Pairs(before),
        after: Pairs(after),
    }
}

fn string_field<'a>(body: &'a Value, field: &str) -> Result<&'a str, Refusal> {
    body.get(field)
        .ok_or_else(|| malformed(format!("the body has no {field}")))?
        .as_str()
        .ok_or_else(|| malformed(format!("{field} must be a string")))
}

fn string_list<'a>(body: &'a Value, field: &str) -> Result<Vec<&'a str>, Refusal> {
    let list = body
        .get(field)
        .ok_or_else(|| malformed(format!("the body has no {field}")))?
        .as_array()
        .ok_or_else(|| malformed(format!("{field} must be a list of strings")))?;
    let items: Option<Vec<&str>> = list.iter().map(Value::as_str).collect();
    items.ok_or_else(|| malformed(format!("{field} must be a list of strings")))
}

/// A reply to `request`, addressed back to its sender.
fn envelope(request: &Value, body: Body) -> Envelope {
    let field = |name: &str, default: &str| {
        request
            .get(name)
            .cloned()
            .unwrap_or_else(|| Value::String(default.into()))
    };
    Envelope {
        src: field("dest", "lb"),
        dest: field("src", "client"),
        body,
    }
}

fn reply_error(request: &Value, in_reply_to: Option<Number>, refusal: Refusal) -> Envelope {
    envelope(
        request,
        Body::Error {
            in_reply_to,
            code: refusal.code,
            text: refusal.text,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn talk(lines: &str) -> Vec<Value> {
        let mut out = Vec::new();
        run(lines.as_bytes(), &mut out).expect("in-memory I/O");
        String::from_utf8(out)
            .expect("UTF-8 replies")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each reply is JSON"))
            .collect()
    }

    #[test]
    fn replies_keep_order_and_swap_addresses() {
        let replies = talk(concat!(
            r#"{"src":"c7","dest":"lb2","body":{"type":"init","msg_id":1,"backends":["b1","b2"]}}"#,
            "\n\n",
            r#"{"src":"c7","dest":"lb2","body":{"type":"http_request","msg_id":2,"client_id":"x"}}"#,
        ));
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0]["src"], "lb2");
        assert_eq!(replies[0]["dest"], "c7");
        assert_eq!(replies[0]["body"]["type"], "init_ok");
        assert_eq!(replies[1]["body"]["in_reply_to"], 2);
    }

    #[test]
    fn before_and_after_keep_the_clients_order() {
        let mut out = Vec::new();
        run(
            concat!(
                r#"{"src":"c","dest":"lb","body":{"type":"init","msg_id":1,"backends":["b1"]}}"#,
                "\n",
                r#"{"src":"c","dest":"lb","body":{"type":"test_remap","msg_id":2,"new_backend":"b2","clients":["zed","amy","zed","mo"]}}"#,
                "\n",
            )
            .as_bytes(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let before = &text[text.find("\"before\"").unwrap()..text.find("\"after\"").unwrap()];
        let (z, a, m) = (
            before.find("zed").unwrap(),
            before.find("amy").unwrap(),
            before.find("mo").unwrap(),
        );
        assert!(z < a && a < m, "{before}");
        assert!(text.contains("\"total\":3"), "{text}");
    }
}
