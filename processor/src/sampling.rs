//! The trace sampler: which spans are exported (printed today). Decisions follow
//! OpenTelemetry's samplers so they agree with the rest of a trace: the trace-id ratio sampler
//! compares the last 8 bytes of the trace id with the ratio, so every service sampling the
//! same trace id at the same ratio makes the same decision, and the parent-based samplers obey
//! the `sampled` flag of an incoming `traceparent`. Metrics (when they arrive) count every
//! request, sampled or not.

use crate::config::Sampler;

/// True when a trace-id ratio sampler at `ratio` keeps `trace_id`.
pub fn ratio_keeps(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    // The upper 63 bits of the last 8 bytes, against the ratio's share of that range.
    let value = u64::from_be_bytes(low) >> 1;
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    value < bound
}

/// The decision for a span with `trace_id` whose caller decided `parent_sampled`, if any.
pub fn keeps(sampler: Sampler, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
    match sampler {
        Sampler::AlwaysOn => true,
        Sampler::AlwaysOff => false,
        Sampler::TraceIdRatio(r) => ratio_keeps(trace_id, r),
        Sampler::ParentBasedAlwaysOn => parent_sampled.unwrap_or(true),
        Sampler::ParentBasedTraceIdRatio(r) => {
            parent_sampled.unwrap_or_else(|| ratio_keeps(trace_id, r))
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn ratio_of_ten_percent_keeps_about_ten_percent() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let n = 10_000;
        let kept = (0..n)
            .filter(|_| ratio_keeps(&rng.random::<[u8; 16]>(), 0.1))
            .count();
        assert!((800..=1200).contains(&kept), "kept {kept} of {n}");
    }

    #[test]
    fn samplers_and_parents() {
        let id = [0xffu8; 16];
        let low = [0u8; 16];
        assert!(keeps(Sampler::AlwaysOn, &id, Some(false)));
        assert!(!keeps(Sampler::AlwaysOff, &low, Some(true)));
        assert!(keeps(Sampler::TraceIdRatio(0.5), &low, None));
        assert!(!keeps(Sampler::TraceIdRatio(0.5), &id, None));
        assert!(!keeps(Sampler::TraceIdRatio(0.0), &low, None));
        assert!(keeps(Sampler::TraceIdRatio(1.0), &id, None));
        assert!(keeps(Sampler::ParentBasedAlwaysOn, &id, None));
        assert!(!keeps(Sampler::ParentBasedAlwaysOn, &id, Some(false)));
        assert!(keeps(
            Sampler::ParentBasedTraceIdRatio(0.0),
            &id,
            Some(true)
        ));
        assert!(!keeps(Sampler::ParentBasedTraceIdRatio(0.5), &id, None));
        assert!(keeps(Sampler::ParentBasedTraceIdRatio(0.5), &low, None));
    }
}
