#!/usr/bin/env bash
# Installs everything Sonde's build and tests need on a fresh Debian 12 machine.
# Idempotent: every step checks first and skips what is already there.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:/usr/lib/llvm-22/bin:$PATH"

DEB_PACKAGES=(
  llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev   # bpf-linker against LLVM 22
  capnproto                                             # capnp schema compiler for capnpc
  nginx wrk curl strace bpftool                         # servers, load, inspection
  openjdk-17-jdk-headless                               # Java test server (com.sun.net.httpserver)
  nodejs python3                                        # Node and Python test servers
  procps iproute2 util-linux                            # ps, ss, setpriv
  prometheus                                            # real Prometheus server and promtool
  systemd                                               # systemd-analyze security (unit scores)
  openssl                                               # test certificates for OTLP over TLS
  redis-server redis-tools                              # Redis server, redis-cli, redis-benchmark
  postgresql-15 postgresql-client-15                    # PostgreSQL server, psql, pgbench
  mariadb-server mariadb-client                         # MySQL-protocol server and client
  memcached                                             # Memcached server
  podman runc                                           # builds the FROM-scratch image (deploy/container)
  nghttp2-client                                        # HTTP/2 load (h2load)
  ethtool iperf3                                        # flow tests (offloads off), flow benchmark
  valgrind                                              # instruction counts (bench/replay_instructions.sh)
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# java/node may come from outside Debian's packages on this machine kind; accept the binaries.
filtered=()
for p in "${missing[@]}"; do
  case "$p" in
    openjdk-17-jdk-headless) command -v javac >/dev/null 2>&1 && continue ;;
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    python3) command -v python3 >/dev/null 2>&1 && continue ;;
  esac
  filtered+=("$p")
done
if ((${#filtered[@]})); then
  log "installing Debian packages: ${filtered[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${filtered[@]}"
else
  log "Debian packages present"
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
else
  log "nightly rust-src present"
fi

if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  log "building bpf-linker 0.13.0 against LLVM 22 (3-4 minutes)"
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22 --locked
else
  log "bpf-linker 0.13.0 present"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# Python peers of the OTLP tests and benchmark: a receiver on the official protobuf definitions
# (grpcio + opentelemetry-proto) and the rotel collector, in a virtualenv of their own.
VENV="${SONDE_TEST_VENV:-$HOME/.local/share/sonde/venv}"
# psycopg2, redis, PyMySQL, kafka-python, pymemcache: the database, cache and broker clients
# of the instrumented web app (tests/peers/db_app.py) and the protocol tests;
# mysql-connector-python for MySQL server-side prepared statements (COM_STMT_*); the
# OpenTelemetry Python SDK with its urllib instrumentation for the own-telemetry tests.
PY_PACKAGES=(grpcio==1.85.1 opentelemetry-proto==1.45.2 protobuf==7.36.2 rotel==0.0.1a15
  psycopg2-binary==2.9.10 redis==5.2.1 PyMySQL==1.1.1 kafka-python==2.0.2 pymemcache==4.0.0
  mysql-connector-python==26.10.0 opentelemetry-sdk==1.45.1 opentelemetry-api==1.45.1
  opentelemetry-instrumentation-urllib==0.66b1)
PY_IMPORTS='import grpc, opentelemetry.proto, rotel, psycopg2, redis, pymysql, kafka, pymemcache,'
PY_IMPORTS+=' mysql.connector, opentelemetry.sdk.trace, opentelemetry.instrumentation.urllib'
if ! "$VENV/bin/python" -c "$PY_IMPORTS" >/dev/null 2>&1; then
  log "creating the test virtualenv $VENV (${PY_PACKAGES[*]})"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --pre "${PY_PACKAGES[@]}"
else
  log "test virtualenv present"
fi

# A Kafka-protocol broker for the messaging tests: the tansu crate, built once and cached
# outside the checkout (a clean clone reuses it; the build takes ~13 minutes).
TANSU_ROOT="${SONDE_TANSU_ROOT:-$HOME/.local/share/sonde/tansu-0.6.0}"
if [[ ! -x "$TANSU_ROOT/bin/tansu" ]]; then
  log "building the tansu 0.6.0 Kafka broker into $TANSU_ROOT (~13 minutes, once)"
  cargo install tansu --version 0.6.0 --features dynostore --locked --root "$TANSU_ROOT"
else
  log "tansu 0.6.0 present"
fi

# Tracefs, which the loader also mounts itself where it is missing; mounting here lets tests
# inspect it.
grep -q ' /sys/kernel/tracing tracefs' /proc/mounts || mount -t tracefs tracefs /sys/kernel/tracing || true

# The system users single-host `sonde` runs as after start-up (`loader.user`, default
# sonde-loader) and the shipped example's processor user (deploy/systemd/sonde.sysusers has the
# same lines for systemd-sysusers).
for user in sonde-loader sonde-processor; do
  if ! id -u "$user" >/dev/null 2>&1; then
    log "creating system user $user"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
  fi
done

log "done"
