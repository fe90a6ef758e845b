#!/usr/bin/env bash
# Turn reports/allure-results (one run: `python -m worker gates` or a gate folder run empties it
# first) into an HTML report at reports/allure-report, keeping the previous report's history so
# trends show. The npm package allure-commandline bundles Allure's Java CLI: after this one npm
# install (cached in .cache/allure-cli) generation runs offline; it needs java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
export ALLURE_NO_ANALYTICS=true            # Allure sends no usage data
cli=.cache/allure-cli/node_modules/.bin/allure
if [ ! -x "$cli" ]; then
  mkdir -p .cache/allure-cli
  (cd .cache/allure-cli && npm install --no-audit --no-fund --silent allure-commandline@2.46.1)
fi
results=reports/allure-results
if [ ! -d "$results" ]; then
  echo "no $results: run python -m worker gates (or pytest gates/gateN) first" >&2
  exit 1
fi
if [ -d reports/allure-report/history ]; then
  rm -rf "$results/history"
  cp -r reports/allure-report/history "$results/history"
fi
"$cli" generate "$results" -o reports/allure-report --clean
echo "open reports/allure-report/index.html (or: $cli open reports/allure-report)"
