#!/usr/bin/env bash
# Screenshot a sweep's report.html in a real headless browser (Chromium from Debian's packages:
# apt-get install chromium), to check that it renders: its plots, tables and text.
# Usage: tools/report/screenshot.sh DIR/report.html OUT.png [WIDTH HEIGHT]
# Exits non-zero when Chromium is missing, fails, or writes no image.
set -euo pipefail
html=$(realpath "$1"); out=$2; w=${3:-1150}; h=${4:-2600}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "screenshot.sh: no chromium (apt-get install chromium)" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$tmp" --window-size="$w,$h" --screenshot="$tmp/shot.png" "file://$html" \
  >/dev/null 2>&1 || { echo "screenshot.sh: chromium failed" >&2; exit 1; }
[ -s "$tmp/shot.png" ] || { echo "screenshot.sh: no image written" >&2; exit 1; }
head -c 8 "$tmp/shot.png" | od -An -tx1 | grep -q "89 50 4e 47" || { echo "screenshot.sh: not a PNG" >&2; exit 1; }
mkdir -p "$(dirname "$out")"; cp "$tmp/shot.png" "$out"
echo "$out: $(stat -c %s "$out") bytes, ${w}x${h}"
