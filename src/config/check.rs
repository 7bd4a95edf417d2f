//! The rules that look across fields: addresses that must differ, names
//! and addresses used twice, and the pool against the algorithm (the
//! ring's own rules, asked here, never repeated).

use super::parse::{key_source, RawAlgorithm, RawBackend, RawFile};
use super::*;
use crate::ring::{table_size_verdict, TableSizeVerdict, MAX_POINTS};
use std::collections::HashMap;
use std::ops::Range;

/// Turns a span of the text and a message into a placed error.
pub(super) type At<'a> = dyn Fn(Range<usize>, String) -> ConfigError + 'a;

/// Checks what no single value can tell; returns the warnings, each as
/// `origin:line:column: message`.
pub(super) fn across_fields(
    raw: &RawFile,
    text: &str,
    at: &At<'_>,
) -> Result<Vec<String>, ConfigError> {
    if let Some(keys) = &raw.routing.key {
        for k in keys {
            key_source(k.get_ref())
                .map_err(|m| at(k.span(), format!("routing.key entry {:?}{m}", k.get_ref())))?;
        }
    }
    let listen = raw
        .listen
        .address
        .as_ref()
        .map_or(DEFAULT_LISTEN, |a| a.get_ref().0);
    if let Some(a) = &raw.listen.tls_address {
        if raw.listen.tls.is_none() {
            let m = "listen.tls_address needs listen.tls = { cert, key }";
            return Err(at(a.span(), m.into()));
        }
        if overlap(a.get_ref().0, listen) {
            let m = format!(
                "listen.tls_address {} and listen.address {listen} overlap",
                a.get_ref().0
            );
            return Err(at(a.span(), m));
        }
    }
    let tls_address = raw.listen.tls_address.as_ref().map(|a| a.get_ref().0);
    let listeners = || std::iter::once(listen).chain(tls_address);
    let admin = raw
        .admin
        .address
        .as_ref()
        .map_or(DEFAULT_ADMIN, |a| a.get_ref().0);
    if let Some(l) = listeners().find(|&l| overlap(admin, l)) {
        let span = raw.admin.address.as_ref().map_or(0..0, |a| a.span());
        let m = format!("admin.address {admin} and the listen address {l} overlap");
        return Err(at(span, m));
    }

    if raw.backend.is_empty() {
        let m = "the pool is empty: add at least one [[backend]] with a name and an address";
        return Err(at(text.len()..text.len(), m.into()));
    }
    // Where each name and address was first seen: one hash look-up per
    // backend, so a pool of 100,000 is checked in linear time.
    let mut names = HashMap::with_capacity(raw.backend.len());
    let mut addresses = HashMap::with_capacity(raw.backend.len());
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    for b in &raw.backend {
        let (name, written) = (&b.name.get_ref().0, &b.address.get_ref().0);
        // One address however written ("[::1]:1" = "[0:0:0:0:0:0:0:1]:01").
        let socket = written.parse::<SocketAddr>().ok();
        let address = socket.map_or_else(|| written.to_ascii_lowercase(), |a| a.to_string());
        if let Some(l) = socket.and_then(|a| listeners().chain([admin]).find(|&l| overlap(a, l))) {
            let m = format!("backend {name:?} at {written} is the proxy's own address {l}: requests would loop back into the proxy");
            return Err(at(b.address.span(), m));
        }
        if let Some(&first) = names.get(name) {
            let m = format!("duplicate backend name {name:?} (first used on line {first})");
            return Err(at(b.name.span(), m));
        }
        if let Some(&first) = addresses.get(&address) {
            let m = format!("duplicate backend address {written:?} (first used on line {first})");
            return Err(at(b.address.span(), m));
        }
        names.insert(name, line_of(b.name.span().start));
        addresses.insert(address, line_of(b.address.span().start));
    }

    let r = &raw.routing;
    let algorithm = r.algorithm.as_ref().map(|a| *a.get_ref());
    let name = match algorithm {
        None | Some(RawAlgorithm::Ring) => "ring",
        Some(RawAlgorithm::Maglev) => "maglev",
        Some(RawAlgorithm::Rendezvous) => "rendezvous",
    };
    let mut warnings = Vec::new();
    match (algorithm, &r.table_size) {
        (Some(RawAlgorithm::Maglev), size) => {
            let n = raw.backend.len();
            let (what, span, m) = match size {
                Some(t) => ("", t.span(), t.get_ref().0 as u32),
                None => {
                    let span = r.algorithm.as_ref().map_or(0..0, |a| a.span());
                    ("default ", span, DEFAULT_TABLE_SIZE)
                }
            };
            let place = |m: String| at(span.clone(), format!("routing.table_size ({what}{m}"));
            match table_size_verdict(m, n) {
                TableSizeVerdict::Good => {}
                TableSizeVerdict::Uneven(w) => {
                    warnings.push(place(format!("{m}) {w}")).to_string())
                }
                TableSizeVerdict::TooSmall(e) | TableSizeVerdict::Unbuildable(e) => {
                    return Err(place(format!("{m}) {e}")))
                }
            }
        }
        (_, Some(t)) => {
            let m =
                format!("routing.table_size only applies to algorithm = \"maglev\", not {name:?}");
            return Err(at(t.span(), m));
        }
        (_, None) => {}
    }
    match (algorithm, &r.vnodes) {
        (None | Some(RawAlgorithm::Ring), v) => {
            let vnodes =
                v.as_ref()
                    .map_or(i64::from(DEFAULT_VNODES), |v| v.get_ref().0) as u64;
            let weight = |b: &&RawBackend| b.weight.as_ref().map_or(1, |w| w.get_ref().0 as u64);
            let total: u64 = raw.backend.iter().map(|b| weight(&b)).sum();
            if vnodes.saturating_mul(total) > MAX_POINTS {
                let m = format!("routing.vnodes ({vnodes}) × total weight ({total}) exceeds {MAX_POINTS} ring points");
                // At vnodes if written, else at the heaviest backend's weight.
                let heaviest = raw.backend.iter().max_by_key(weight);
                let span = v.as_ref().map(|v| v.span());
                let span = span.or_else(|| heaviest?.weight.as_ref().map(|w| w.span()));
                return Err(at(span.unwrap_or(0..0), m));
            }
        }
        (Some(_), Some(v)) => {
            let m =
                format!("routing.vnodes only applies to algorithm = \"ring\"; {name} ignores it");
            warnings.push(at(v.span(), m).to_string());
        }
        (Some(_), None) => {}
    }
    Ok(warnings)
}

/// Whether two listening addresses take the same port: equal, or one of
/// them the wildcard of its family (IPv6's `[::]` takes IPv4 too, as
/// Linux binds it dual-stack by default).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip().to_canonical() == b.ip().to_canonical()
            || a.ip().is_unspecified()
            || b.ip().is_unspecified())
}
