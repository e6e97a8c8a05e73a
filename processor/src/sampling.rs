//! The trace sampler: which spans are exported (printed today). Decisions follow
//! OpenTelemetry's samplers so they agree with the rest of a trace: the trace-id ratio sampler
//! compares the last 8 bytes of the trace id with the ratio, so every service sampling the
//! same trace id at the same ratio makes the same decision, and the parent-based samplers obey
//! the `sampled` flag of an incoming `traceparent`. Metrics (when they arrive) count every
//! request, sampled or not.

use crate::config::Sampler;

/// The trace ids a ratio sampler keeps are those whose last 8 bytes, shifted right by one
/// (their upper 63 bits), are below this: the ratio's share of that range.
fn ratio_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        return 1 << 63;
    }
    if ratio <= 0.0 {
        return 0;
    }
    (ratio * (1u64 << 63) as f64) as u64
}

/// True when a trace-id ratio sampler at `ratio` keeps `trace_id`.
pub fn ratio_keeps(trace_id: &[u8; 16], ratio: f64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < ratio_bound(ratio)
}

/// The rule the kernel applies to the trace flags of a `traceparent` it injects: the
/// decision `keeps` makes for that client span, which has no parent. The kernel marks the
/// trace sampled when the upper 63 bits of its id's last 8 bytes are below this (the loader
/// passes it on from the processor's hello).
pub fn inject_bound(sampler: Sampler) -> u64 {
    match sampler {
        Sampler::AlwaysOn | Sampler::ParentBasedAlwaysOn => 1 << 63,
        Sampler::AlwaysOff => 0,
        Sampler::TraceIdRatio(r) | Sampler::ParentBasedTraceIdRatio(r) => ratio_bound(r),
    }
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
    /// What the kernel does with `inject_bound` (loader-ebpf/src/inject.rs).
    fn kernel_flags_sampled(trace_id: &[u8; 16], bound: u64) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < bound
    }

    #[test]
    fn injected_flags_carry_the_decision_the_processor_makes() {
        let mut rng = rand::rng();
        for sampler in [
            Sampler::AlwaysOn,
            Sampler::AlwaysOff,
            Sampler::ParentBasedAlwaysOn,
            Sampler::TraceIdRatio(0.25),
            Sampler::TraceIdRatio(1.5),
            Sampler::ParentBasedTraceIdRatio(0.5),
            Sampler::ParentBasedTraceIdRatio(0.0),
        ] {
            let bound = inject_bound(sampler);
            for _ in 0..2000 {
                let id: [u8; 16] = rng.random();
                let flags = kernel_flags_sampled(&id, bound);
                // The processor takes the injected flags as the span's parent decision.
                assert_eq!(
                    keeps(sampler, &id, Some(flags)),
                    flags,
                    "{sampler:?} {id:?}"
                );
            }
        }
    }

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
