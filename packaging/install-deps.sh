#!/usr/bin/env bash
# Install everything site-connector and its test suite need, on Debian/Ubuntu:
#   - Debian packages: dcmtk (storescu/storescp, used by the tests and for PACS checks),
#     orthanc + orthanc-dicomweb (the real PACS and DICOMweb peer in the tests);
#     chromium + chromium-driver (the dashboard test drives a real headless browser);
#     dicom3tools (dciodvfy: the de-identification tests check outputs are as valid as inputs);
#   - podman, buildah, runc, debootstrap (and catatonit, netavark, iptables): the container test
#     (tests/packaging/test_container.py) makes a Debian base locally, builds the image and runs it;
#   - the Python package itself with its test extra.
# Installs only what is missing; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v /usr/bin/storescu >/dev/null 2>&1 || need+=(dcmtk)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 || need+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need+=(chromium)  # the dashboard's browser test (headless)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)  # IOD validator (tests/deid/test_deid_validity.py)
# OpenCV (the burned-in text OCR's image steps, from rapidocr-onnxruntime) links libGL and GLib
libs="$(/sbin/ldconfig -p 2>/dev/null || true)"
grep -q 'libGL\.so\.1 ' <<<"$libs" || need+=(libgl1)
grep -q 'libgthread-2\.0\.so\.0 ' <<<"$libs" || need+=(libglib2.0-0)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The orthanc package starts a system service; the tests run their own instances.
  $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
fi

# Containers (tests/packaging/test_container.py): rootful podman with runc, buildah for builds,
# debootstrap for the locally made base image (no registry pull), catatonit for --init,
# netavark and iptables for the network of build steps. Recommends are not needed.
cneed=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || cneed+=("$tool")
done
[ -x /usr/bin/catatonit ] || [ -x /usr/libexec/podman/catatonit ] || cneed+=(catatonit)
[ -x /usr/lib/podman/netavark ] || cneed+=(netavark aardvark-dns)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || cneed+=(iptables)
if [ "${#cneed[@]}" -gt 0 ]; then
  echo "installing Debian packages for the container test: ${cneed[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${cneed[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
