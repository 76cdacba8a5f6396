#!/usr/bin/env bash
# Debian packages the tests and tools use; installs only what is missing (needs root or sudo).
set -euo pipefail
needed=()
[ -d /usr/share/datasets/fashion-mnist ] || needed+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || needed+=(chromium)  # the real-browser test (tests/test_browser.py)
[ ${#needed[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: cannot install ${needed[*]} (no apt-get); tests that need them are skipped" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${needed[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${needed[@]}" >/dev/null
