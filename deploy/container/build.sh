#!/usr/bin/env bash
# Builds the image deploy/kubernetes/sonde.yaml runs (`sonde:<workspace version>`) FROM scratch:
# the two release binaries, exactly the shared libraries they load (resolved by the dynamic
# loader itself, `ld.so --list`, the same answer as `ldd`), Debian's Mozilla CA bundle for OTLP
# over TLS, and an /etc/passwd + /etc/group naming root (the loader) and the processor's user
# and group 61532. No shell, no package manager, nothing else. From the repository root:
#
#   deploy/container/build.sh                    # cargo build --release, stage, podman build
#   deploy/container/build.sh --oci-archive sonde.oci.tar   # also `podman save` it
#
# Options:
#   --binaries DIR      take sonde-loader and sonde-processor from DIR, no cargo build
#                       (default: `cargo build --release` then target/release)
#   --context DIR       where the build context is staged (default target/container)
#   --tag NAME          image name (default sonde:<workspace version>)
#   --oci-archive PATH  also write the image as an OCI archive (`podman save --format oci-archive`)
#   --rootfs-only       stage the context only; no podman needed
#   --builder CMD       podman (default) or buildah
#
# What it runs, once staged (the context holds Containerfile and rootfs/):
#
#   podman build --pull=never -f deploy/container/Containerfile -t sonde:0.1.0 target/container
#
# Podman's own settings (storage, runtime) apply; CONTAINERS_STORAGE_CONF selects another store
# (tests/tests/container_image.rs uses a private one).
set -euo pipefail
export LC_ALL=C

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

version="$(awk '/^\[workspace\.package\]/{p=1;next} /^\[/{p=0} p && $1=="version"{gsub(/"/,"",$3);print $3;exit}' Cargo.toml)"
[ -n "$version" ] || { echo "build.sh: no [workspace.package] version in Cargo.toml" >&2; exit 1; }

binaries=""
context="$root/target/container"
tag="sonde:$version"
archive=""
rootfs_only=0
builder=podman
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) binaries="$2"; shift 2 ;;
    --context) context="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --oci-archive) archive="$2"; shift 2 ;;
    --rootfs-only) rootfs_only=1; shift ;;
    --builder) builder="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[container] %s\n' "$*" >&2; }

if [ -z "$binaries" ]; then
  log "cargo build --release -p sonde-loader -p sonde-processor"
  cargo build --release --locked -p sonde-loader -p sonde-processor
  binaries="$root/target/release"
fi
binaries="$(cd "$binaries" && pwd)"
bins=(sonde-loader sonde-processor)
for b in "${bins[@]}"; do
  [ -x "$binaries/$b" ] || { echo "build.sh: $binaries/$b is missing" >&2; exit 1; }
done

# The processor's user and group: the manifest's runAsUser/runAsGroup and the group
# `processor.group` of its configuration names.
processor_uid=61532
processor_gid=61532

rootfs="$context/rootfs"
rm -rf "$context"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
chmod 0755 "$context" "$rootfs"
cp "$root/deploy/container/Containerfile" "$context/Containerfile"

for b in "${bins[@]}"; do
  install -m 0755 "$binaries/$b" "$rootfs/usr/local/bin/$b"
done

# Shared libraries: what the binaries' own interpreter (PT_INTERP) loads for them, at the
# paths it found them (so the same search finds them in the image), copied as regular files
# (symlinks dereferenced). The interpreter is listed as its PT_INTERP path.
declare -A libs=()
for b in "${bins[@]}"; do
  out="$(ldd "$binaries/$b")" || { echo "build.sh: ldd $b failed: $out" >&2; exit 1; }
  if grep -q 'not found' <<<"$out"; then
    echo "build.sh: $b has unresolved libraries:" >&2
    echo "$out" >&2
    exit 1
  fi
  if grep -q 'statically linked' <<<"$out"; then
    continue
  fi
  while read -r line; do
    case "$line" in
      *"=> /"*) path="${line#*=> }"; path="${path%% (*}" ;;
      /*) path="${line%% (*}" ;;
      linux-vdso.so.*|linux-gate.so.*) continue ;;
      *) echo "build.sh: unexpected ldd line for $b: $line" >&2; exit 1 ;;
    esac
    libs["$path"]=1
  done <<<"$out"
done
for path in "${!libs[@]}"; do
  mkdir -p "$rootfs$(dirname "$path")"
  # Executable libraries (the interpreter, libc) stay executable; the others 0644.
  if [ -x "$path" ]; then mode=0755; else mode=0644; fi
  install -m "$mode" "$(readlink -f "$path")" "$rootfs$path"
done

# CA certificates: Debian's Mozilla set (the ca-certificates package), not the host's
# /etc/ssl/certs bundle, which also holds whatever local CAs this machine trusts
# (/usr/local/share/ca-certificates). rustls-native-certs reads this file.
shopt -s nullglob
certs=(/usr/share/ca-certificates/mozilla/*.crt)
shopt -u nullglob
[ ${#certs[@]} -gt 0 ] || { echo "build.sh: no /usr/share/ca-certificates/mozilla/*.crt (apt-get install ca-certificates)" >&2; exit 1; }
for c in "${certs[@]}"; do cat "$c"; done > "$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$rootfs/etc/ssl/certs/ca-certificates.crt"

# Users: root for the loader container (runAsUser: 0), the processor's own uid/gid (not the
# 65532 "nonroot" many images share). The login shell named is a path the image lacks.
cat > "$rootfs/etc/passwd" <<EOF
root:x:0:0:sonde-loader:/:/nonexistent
sonde-processor:x:$processor_uid:$processor_gid:sonde-processor:/nonexistent:/nonexistent
EOF
cat > "$rootfs/etc/group" <<EOF
root:x:0:
sonde:x:$processor_gid:
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
find "$rootfs" -type d -exec chmod 0755 {} +

log "staged $context ($(du -sh "$rootfs" | cut -f1)):"
(cd "$rootfs" && find . -type f | sort | sed 's/^\./  /') >&2

if [ "$rootfs_only" = 1 ]; then
  exit 0
fi

command -v "$builder" >/dev/null || {
  echo "build.sh: $builder is not installed (Debian: apt-get install podman runc; or --rootfs-only)" >&2
  exit 1
}
case "$builder" in
  podman) "$builder" build --pull=never --build-arg "VERSION=$version" -f "$context/Containerfile" -t "$tag" "$context" ;;
  buildah) "$builder" bud --pull-never --build-arg "VERSION=$version" -f "$context/Containerfile" -t "$tag" "$context" ;;
  *) echo "build.sh: unknown builder $builder" >&2; exit 2 ;;
esac
log "built $tag"
if [ -n "$archive" ]; then
  rm -f "$archive"
  if [ "$builder" = buildah ]; then
    buildah push "$tag" "oci-archive:$archive:$tag"
  else
    podman save --format oci-archive -o "$archive" "$tag"
  fi
  log "wrote $archive ($(du -h "$archive" | cut -f1))"
fi
