#!/usr/bin/env bash
# Install everything site-connector and its test suite need, on Debian/Ubuntu:
#   - Debian packages: dcmtk (storescu/storescp, used by the tests and for PACS checks),
#     orthanc + orthanc-dicomweb (the real PACS and DICOMweb peer in the tests);
#     chromium + chromium-driver (the dashboard test drives a real headless browser);
#     dicom3tools (dciodvfy: the de-identification tests check outputs are as valid as inputs);
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

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
