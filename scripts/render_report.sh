#!/usr/bin/env bash
# Render a run report in headless Chromium and save a screenshot, to check the page (and its inlined plots) displays.
#   usage: scripts/render_report.sh RUN/report.html [OUT.png] [WIDTHxHEIGHT]
# Needs Chromium (Debian: apt-get install -y chromium). Networking and updates are switched off: the page is
# self-contained, so a render that shows the plots proves nothing was fetched from elsewhere.
set -euo pipefail
page="${1:?usage: $0 RUN/report.html [OUT.png] [WIDTHxHEIGHT]}"
out="${2:-${page%.html}.png}"
size="${3:-1200x3600}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "chromium not found (apt-get install -y chromium)" >&2; exit 3; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --hide-scrollbars \
  --window-size="${size/x/,}" --screenshot="$out" "file://$(realpath "$page")" >/dev/null 2>&1
[ -s "$out" ] || { echo "no screenshot written to $out" >&2; exit 1; }
echo "$out"
