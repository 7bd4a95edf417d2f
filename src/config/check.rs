//! The rules that look across fields: addresses that must differ, names
//! and addresses used twice, and the pool against the algorithm (the
//! ring's own rules, asked here, never repeated).

use super::parse::{RawAlgorithm, RawFile};
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
    let listen = raw.listen.address.map_or(DEFAULT_LISTEN, |a| a.0);
    if let Some(a) = &raw.listen.tls_address {
        if raw.listen.tls.is_none() {
            let m = "listen.tls_address needs listen.tls = { cert, key }";
            return Err(at(a.span(), m.into()));
        }
        if a.get_ref().0 == listen {
            let m = format!("listen.tls_address and listen.address are both {listen}");
            return Err(at(a.span(), m));
        }
    }
    let admin = raw.admin.address.map_or(DEFAULT_ADMIN, |a| a.0);
    let tls_address = raw.listen.tls_address.as_ref().map(|a| a.get_ref().0);
    if admin == listen || Some(admin) == tls_address {
        let m = format!("admin.address and a listen address are both {admin}");
        return Err(at(0..0, m));
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
        let (name, address) = (&b.name.get_ref().0, &b.address.get_ref().0);
        if let Some(&first) = names.get(name) {
            let m = format!("duplicate backend name {name:?} (first used on line {first})");
            return Err(at(b.name.span(), m));
        }
        if let Some(&first) = addresses.get(address) {
            let m = format!("duplicate backend address {address:?} (first used on line {first})");
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
            let total: u64 = raw.backend.iter().map(|b| b.weight.0 as u64).sum();
            if vnodes.saturating_mul(total) > MAX_POINTS {
                let m = format!("routing.vnodes ({vnodes}) × total weight ({total}) exceeds {MAX_POINTS} ring points");
                return Err(at(0..0, m));
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
