//! Rules that look across fields of the config (the Maglev table size
//! against the pool), over the ring's own rules.

use super::parse::At;
use super::ConfigError;
use std::ops::Range;

/// Checks a Maglev table size against the pool: a prime of at least 10 ×
/// the backends (an error that names the next good prime otherwise), and a
/// warning under 100 × the backends, where shares start to differ by more
/// than about 1%. `given` says whether the file set it or it is the default.
pub(super) fn check_table_size(
    at: &At<'_>,
    span: Range<usize>,
    given: bool,
    size: u32,
    backends: usize,
) -> Result<Option<ConfigError>, ConfigError> {
    let n = backends as u64;
    let what = if given {
        format!("routing.table_size {size}")
    } else {
        format!("routing.table_size (default {size})")
    };
    let max = crate::ring::MAX_POINTS;
    let suggest = |from: u64| {
        let p = crate::ring::next_prime(from);
        if p <= max {
            format!("use a prime such as {p}")
        } else {
            format!("no prime table size up to {max} is large enough for this pool; use \"ring\" or \"rendezvous\"")
        }
    };
    let m = u64::from(size);
    if !crate::ring::is_prime(m) {
        return Err(at(
            span,
            format!("{what} is not a prime; {}", suggest(m.max(10 * n))),
        ));
    }
    if m < 10 * n {
        return Err(at(
            span,
            format!(
                "{what} is smaller than 10 × {n} backends; {}",
                suggest(10 * n)
            ),
        ));
    }
    Ok((m < 100 * n).then(|| {
        at(
            span,
            format!(
                "{what} gives each of the {n} backends only about {} slots, so shares can differ by about {:.1}% of the mean; a prime of at least {} such as {} balances better",
                m / n,
                100.0 * n as f64 / m as f64,
                100 * n,
                crate::ring::next_prime(100 * n)
            ),
        )
    }))
}
