#!/usr/bin/env bash
# Install (or upgrade) site-connector from this offline bundle; no network is used.
#
#   ./install.sh [--prefix /opt/site-connector] [--python python3]
#
# Creates a virtual environment at PREFIX (kept on upgrade), installs the wheels from wheelhouse/
# with `pip --no-index`, and puts the shipped rules and model under PREFIX/share/site-connector.
# It never touches configuration, data or keys. Run as root for /opt; any user for a own prefix.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PREFIX="/opt/site-connector"
PYTHON="python3"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

echo "checking the bundle"
(cd "$HERE" && sha256sum --quiet --check SHA256SUMS) || { echo "install.sh: the bundle is damaged (checksum mismatch)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "install.sh: $PYTHON is older than Python 3.11" >&2; exit 1; }

if [ ! -x "$PREFIX/bin/python" ]; then
  echo "creating the environment in $PREFIX"
  "$PYTHON" -m venv "$PREFIX"
fi
PIP=("$PREFIX/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
"${PIP[@]}" install --no-index --find-links "$HERE/wheelhouse" --upgrade pip
"${PIP[@]}" install --no-index --find-links "$HERE/wheelhouse" --upgrade site-connector

SHARE="$PREFIX/share/site-connector"
mkdir -p "$SHARE"
for part in rules models; do
  if [ -d "$HERE/share/site-connector/$part" ]; then
    rm -rf "$SHARE/$part.new"
    cp -r "$HERE/share/site-connector/$part" "$SHARE/$part.new"
    rm -rf "$SHARE/$part"
    mv "$SHARE/$part.new" "$SHARE/$part"
  fi
done
mkdir -p "$SHARE/service"
cp "$HERE"/service/* "$SHARE/service/"

"$PREFIX/bin/site-connector" --version
MODEL_HINT=""
if [ -d "$SHARE/models/cac-synthetic-v2" ] && ! "$PREFIX/bin/python" -I -c \
    'import sys; from connector.infer.manifest import BUNDLED_MODEL_DIR as d; sys.exit(0 if d.is_dir() else 1)' 2>/dev/null; then
  MODEL_HINT="The bundled CAC model (synthetic phantoms, not for clinical use) is at $SHARE/models/cac-synthetic-v2:
set [cac] model_dir to it (or to your validated model) in the configuration."
fi
cat <<EOF
Installed into $PREFIX. Rules and the bundled model are in $SHARE.
Next (first install): see the README, "Installing at a site":
  $PREFIX/bin/site-connector init /etc/site-connector --site-id SITE01 --data-dir /var/lib/site-connector
  cp $SHARE/service/site-connector.service /etc/systemd/system/ && systemctl daemon-reload
  systemctl enable --now site-connector
Upgrade: systemctl restart site-connector
EOF
if [ -n "$MODEL_HINT" ]; then echo "$MODEL_HINT"; fi
