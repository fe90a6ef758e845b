#!/usr/bin/env bash
# Screenshots of the Allure report (overview, Behaviors, Categories) and of the gate board page,
# taken by a headless Chromium (Debian: apt-get install chromium) from a local HTTP server, since
# the Allure report loads its data over HTTP. Usage: scripts/report-screenshots.sh OUT_DIR [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:?usage: scripts/report-screenshots.sh OUT_DIR [PORT]}")
port=${2:-8765}
mkdir -p "$out"
python3 -m http.server "$port" --bind 127.0.0.1 --directory reports >/dev/null 2>&1 &
server=$!
trap 'kill "$server"' EXIT
sleep 1
shot() {  # shot NAME URL WIDTHxHEIGHT
  profile=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
    --virtual-time-budget=8000 --window-size="$3" --screenshot="$out/$1.png" "$2" >/dev/null 2>&1
  rm -rf "$profile"
  echo "$out/$1.png"
}
base=http://127.0.0.1:$port
shot allure-overview "$base/allure-report/index.html" 1600,1400
shot allure-behaviors "$base/allure-report/index.html#behaviors" 1600,1400
shot allure-categories "$base/allure-report/index.html#categories" 1600,1100
shot gate-board "$base/gate-board.html" 1600,1800
