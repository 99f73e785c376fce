#!/usr/bin/env bash
# Make a Debian bookworm Python base image locally, without pulling from any container registry:
# debootstrap a minimal bookworm root filesystem with Debian's python3 and python3-venv, pack it
# as a tarball in a cache outside the repository, and `podman import` it.
#
#   bash packaging/make-base-image.sh [IMAGE_NAME]      # default localhost/bookworm-python:local
#
# Cache: ${SITE_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/site-connector}/bookworm-python-rootfs.tar.gz
# (made once, about 1-2.5 minutes and 58 MB; reused on later runs on the same machine; delete it to
# refresh the Debian packages). Needs root (debootstrap) and deb.debian.org, or a mirror in
# DEBIAN_MIRROR. Then build the connector on it:
#
#   podman build --format docker -f packaging/Dockerfile \
#       --build-arg PYTHON_IMAGE=localhost/bookworm-python:local -t site-connector:local .
set -euo pipefail

IMAGE="${1:-localhost/bookworm-python:local}"
CACHE="${SITE_CONNECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/site-connector}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TARBALL="$CACHE/bookworm-python-rootfs.tar.gz"
PODMAN="${PODMAN:-podman}"

mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "make-base-image: debootstrap is missing (bash packaging/install-deps.sh)" >&2; exit 2; }
  work="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "make-base-image: debootstrap bookworm into $work (from $MIRROR)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  root="$work/rootfs"
  # What the python:3.x-slim images also do: no package lists or downloaded .debs in the image,
  # and apt clears them after every install (images whose Dockerfile forgets the clean-up).
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/docker-excludes"
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$MIRROR" "$MIRROR" >"$root/etc/apt/sources.list"
  : >"$root/etc/hostname"
  tar -C "$root" --numeric-owner -czf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

# Imported again only when the tarball changed: every import is a new image (its creation time
# differs), and a new base would make the next build redo every layer.
digest="$(sha256sum "$TARBALL" | cut -c1-64)"
have="$("$PODMAN" image inspect --format '{{index .Config.Labels "org.site-connector.rootfs-sha256"}}' "$IMAGE" 2>/dev/null || true)"
if [ "$have" != "$digest" ]; then
  # The config of an imported image is empty: give it what a Python base image has.
  "$PODMAN" import --quiet \
    --change "LABEL org.site-connector.rootfs-sha256=$digest" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$IMAGE" >/dev/null
fi
echo "$IMAGE"
