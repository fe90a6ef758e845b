#!/usr/bin/env bash
# Turn reports/allure-results into an HTML report at reports/allure-report.
# The npm package allure-commandline bundles Allure's Java CLI: after this one npm install
# (cached in .cache/allure-cli) generation runs offline; it needs java (17 is installed here).
set -euo pipefail
cd "$(dirname "$0")/.."
cli=.cache/allure-cli/node_modules/.bin/allure
if [ ! -x "$cli" ]; then
  mkdir -p .cache/allure-cli
  (cd .cache/allure-cli && npm install --no-audit --no-fund --silent allure-commandline@2.46.1)
fi
"$cli" generate reports/allure-results -o reports/allure-report --clean
echo "open reports/allure-report/index.html (or: $cli open reports/allure-report)"
