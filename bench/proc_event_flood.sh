#!/usr/bin/env bash
# The process-notice path under an unprivileged exec/listen() flood: runs `sonde` with a
# selection, then LOOPS (default 2) loops as uid 65534 that each vfork+exec /bin/true and
# bind+listen()+close a TCP socket as fast as they can for DURATION seconds, and prints the
# loops' rate against the kernel's `proc_events_lost` counter.
#   MODE=default  ports the loops listen on are not selected, no executable-path selection
#                 (the kernel reports none of the loops' execs or listens)
#   MODE=worst    the loops listen on selected ports and `--exe` is set, so every exec and
#                 every listen() reaches the loader
# SPAWN=0: listen() only (no exec), the fastest loop an unprivileged user can run.
# Run as root after `cargo build` (BIN=target/release/sonde to use a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-5}"; loops="${LOOPS:-2}"; mode="${MODE:-default}"
bin="${BIN:-target/debug/sonde}"
dir=$(mktemp -d); chmod 755 "$dir"
cat > "$dir/flood.c" <<'C'
#include <arpa/inet.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    double secs = atof(argv[1]); int lo = atoi(argv[2]), span = atoi(argv[3]), spawn = atoi(argv[4]);
    struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
    long n = 0;
    char *args[] = {"/bin/true", NULL};
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec + (t.tv_nsec - t0.tv_nsec) / 1e9 >= secs) break;
        pid_t pid;
        if (spawn && posix_spawn(&pid, "/bin/true", NULL, NULL, args, environ) == 0) waitpid(pid, NULL, 0);
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                .sin_port = htons(span ? lo + n % span : 0)};
        if (bind(s, (struct sockaddr *)&a, sizeof a) == 0) listen(s, 1);
        close(s);
        n++;
    }
    printf("%ld\n", n);
    return 0;
}
C
gcc -O2 -o "$dir/flood" "$dir/flood.c"
base=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
lo=$((20000 + RANDOM % 20000)); span=$((loops * 4))
if [ "$mode" = worst ]; then
    args=(--open-port "$base,$lo-$((lo + span - 1))" --exe '*/no-such-binary')
    flood_span=$span
else
    args=(--open-port "$base")
    flood_span=0
fi
SONDE_CONTROL_SOCKET="$dir/control.sock" BEYLA_TRACE_PRINTER=disabled "$bin" "${args[@]}" >/dev/null 2>"$dir/sonde.log" & sonde=$!
trap 'kill -INT $sonde 2>/dev/null; wait; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q 'processor connected' "$dir/sonde.log" && break; sleep 0.1; done
pids=()
for i in $(seq "$loops"); do
    setpriv --reuid 65534 --regid 65534 --clear-groups "$dir/flood" "$duration" $((lo + (i - 1) * 4)) $((flood_span ? 4 : 0)) "${SPAWN:-1}" > "$dir/n.$i" & pids+=($!)
done
wait "${pids[@]}"
sleep 1
kill -INT $sonde; wait $sonde || true
total=$(cat "$dir"/n.* | paste -sd+ | bc)
lost=$(grep 'final kernel counters' "$dir/sonde.log" | grep -o '("proc_events_lost", [0-9]*)' | grep -o '[0-9]*)' | tr -d ')')
resyncs=$(grep -c 'process notices were lost' "$dir/sonde.log" || true)
what=$([ "${SPAWN:-1}" = 1 ] && echo "one exec + one listen" || echo "one listen")
echo "mode=$mode loops=$loops duration=${duration}s iterations=$total ($((total / duration))/s, each $what)"
echo "proc_events_lost=$lost resyncs=$resyncs"
