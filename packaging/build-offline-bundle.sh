#!/usr/bin/env bash
# Build an offline install bundle of site-connector for a server without internet access.
#
#   bash packaging/build-offline-bundle.sh [--out DIR] [--python-version 3.12] [--platform manylinux2014_x86_64]
#
# On a machine WITH internet (or a PyPI mirror), this makes DIR/site-connector-<version>-<target>.tar.gz:
#   wheelhouse/     site-connector and every dependency as wheels (no compiler needed on the server)
#   share/          the shipped de-identification rules and the bundled CAC model
#   service/        the systemd unit (and example configuration when present)
#   install.sh      installs into a virtual environment with `pip --no-index --find-links wheelhouse`
#   SHA256SUMS      checked by install.sh before anything is installed
#
# The wheels are for one Python version and CPU architecture. By default they match the Python
# running this script; for another target pass --python-version and --platform (binary wheels
# only, e.g. --python-version 3.11 --platform manylinux2014_x86_64 for Debian 12 on x86-64).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="dist"
TARGET_PY=""
TARGET_PLATFORM=""
PYTHON="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --python-version) TARGET_PY="$2"; shift 2 ;;
    --platform) TARGET_PLATFORM="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-offline-bundle: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if { [ -n "$TARGET_PY" ] && [ -z "$TARGET_PLATFORM" ]; } || { [ -z "$TARGET_PY" ] && [ -n "$TARGET_PLATFORM" ]; }; then
  echo "build-offline-bundle: give --python-version and --platform together" >&2; exit 2
fi

VERSION="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
if [ -n "$TARGET_PY" ]; then
  PYTAG="py${TARGET_PY}"; PLAT="$TARGET_PLATFORM"
else
  PYTAG="py$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  PLAT="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')"
fi
NAME="site-connector-${VERSION}-${PYTAG}-${PLAT}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/$NAME"
mkdir -p "$STAGE/wheelhouse" "$STAGE/share/site-connector" "$STAGE/service"

PIP=("$PYTHON" -m pip --disable-pip-version-check --no-input)
echo "building the site-connector wheel"
# From a clean copy: an old build/ folder in the checkout could slip stale modules into the wheel.
mkdir -p "$WORK/src"
cp -r pyproject.toml connector rules models "$WORK/src/"  # rules and model ship inside the wheel too (data-files)
for f in README.md LICENSE LICENSE.txt NOTICE; do [ -e "$f" ] && cp "$f" "$WORK/src/"; done
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"${PIP[@]}" wheel --quiet --no-deps --wheel-dir "$STAGE/wheelhouse" "$WORK/src"
OWN_WHEEL="$(ls "$STAGE"/wheelhouse/site_connector-*.whl)"
echo "collecting dependency wheels for ${PYTAG} ${PLAT}"
if [ -n "$TARGET_PY" ]; then
  "${PIP[@]}" download --quiet --only-binary=:all: --python-version "$TARGET_PY" --platform "$TARGET_PLATFORM" \
    --implementation cp --dest "$STAGE/wheelhouse" "$OWN_WHEEL"
else
  # pip wheel also builds wheels for the odd dependency published only as source.
  "${PIP[@]}" wheel --quiet --prefer-binary --wheel-dir "$STAGE/wheelhouse" "$OWN_WHEEL"
fi
# pip itself, so the server can install with a known-good pip even if its own is old.
"${PIP[@]}" download --quiet --only-binary=:all: --no-deps --dest "$STAGE/wheelhouse" \
  ${TARGET_PY:+--python-version "$TARGET_PY" --platform "$TARGET_PLATFORM" --implementation cp} "pip>=23"
rm -f "$STAGE"/wheelhouse/*.tar.gz "$STAGE"/wheelhouse/*.zip  # wheels only: nothing is built on the server

cp -r rules "$STAGE/share/site-connector/rules"
[ -d models ] && cp -r models "$STAGE/share/site-connector/models"
cp service/*.service "$STAGE/service/"
for extra in service/*.toml service/*.md; do [ -e "$extra" ] && cp "$extra" "$STAGE/service/"; done
cp packaging/offline-install.sh "$STAGE/install.sh"
chmod 0755 "$STAGE/install.sh"
cat > "$STAGE/README.txt" <<EOF
site-connector ${VERSION}: offline install bundle for Python ${PYTAG#py} on ${PLAT}.

  sudo ./install.sh                      # installs into /opt/site-connector (a virtual environment)
  sudo ./install.sh --prefix /srv/sc     # somewhere else
  ./install.sh --help

Upgrading: run the install.sh of the newer bundle; data, keys and configuration are not touched.
Then: systemctl restart site-connector. See the project README ("Installing at a site") for the rest.
EOF
(cd "$STAGE" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS)

tar -C "$WORK" -czf "$OUT/$NAME.tar.gz" "$NAME"
echo "$OUT/$NAME.tar.gz ($(du -h "$OUT/$NAME.tar.gz" | cut -f1), $(ls "$STAGE/wheelhouse" | wc -l) wheels)"
