//! The processor's scheduling policy (`processor.scheduling`): `SCHED_BATCH` by default, set
//! once in `main` before any thread starts, so every thread inherits it (glibc creates threads
//! with `PTHREAD_INHERIT_SCHED`).
//!
//! Why: on a host whose CPUs the instrumented applications keep busy, a normal-policy
//! processor woken for its ring preempts the application on that CPU at once, about a
//! thousand times a second under nginx at saturation, each time with two context switches and
//! a cold cache for the application. Under `SCHED_BATCH` the processor keeps the same fair
//! share of CPU (its weight is that of nice 0), but a wake-up waits for the running task's
//! slice to end; it then finds more records waiting and takes them in one go (BENCHMARKS.md,
//! "The processor under SCHED_BATCH"). Lowering one's own policy to `SCHED_BATCH` needs no
//! privilege; in single-host mode the loader's inherited run-time seccomp policy allows
//! exactly this call (`seccomp/loader.json`, `sched_setscheduler` with pid 0 and policy 3). A
//! processor started under `SCHED_BATCH` already (the systemd unit) makes no call.
//! Done through `libc` because `nix` has no wrapper for `sched_setscheduler`.

use sonde_config::Scheduling;

/// Puts the calling thread (and the threads it starts afterwards) under `policy`; `Inherit`
/// leaves the policy as started.
pub fn apply(policy: Scheduling) -> std::io::Result<()> {
    match policy {
        Scheduling::Inherit => Ok(()),
        // Already so (systemd's `CPUSchedulingPolicy=batch` in deploy/systemd, whose
        // system-call filter denies `@resources`): no call to make.
        Scheduling::Batch if current() == libc::SCHED_BATCH => Ok(()),
        Scheduling::Batch => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid `sched_param` for the duration of the call; pid 0 is
            // the calling thread; the call changes nothing but that thread's policy.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
    }
}

/// The calling thread's scheduling policy, as `sched_getscheduler` gives it (-1 when the call
/// is refused).
fn current() -> i32 {
    // SAFETY: no arguments but pid 0 (the calling thread); no memory is passed.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_set_on_this_thread_and_inherited_by_the_next() {
        // On a thread of its own, so the test harness's other threads keep their policy.
        std::thread::spawn(|| {
            let before = current();
            apply(Scheduling::Inherit).expect("inherit never fails");
            assert_eq!(current(), before, "inherit changes nothing");
            apply(Scheduling::Batch).expect("SCHED_BATCH needs no privilege");
            assert_eq!(current(), libc::SCHED_BATCH);
            let child = std::thread::spawn(current).join().expect("child thread");
            assert_eq!(
                child,
                libc::SCHED_BATCH,
                "threads started afterwards inherit it"
            );
        })
        .join()
        .expect("test thread");
    }
}
