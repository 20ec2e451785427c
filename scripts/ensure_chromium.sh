#!/usr/bin/env bash
# The status page's browser test drives the system Chromium (Debian's `chromium`) with Playwright.
# Install it when it is missing and this machine can (root with apt-get); say so otherwise.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Chromium for the status page's browser test (apt-get install chromium)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
else
  echo "warning: no Chromium here and no way to install it (root and apt-get): the browser test will fail" >&2
fi
