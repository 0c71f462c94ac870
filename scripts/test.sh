#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (idempotent), then
# lint + format check + type check, then every test (unit, netns integration, real etcd, CNI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== lint"
npx --no-install eslint .
npx --no-install prettier --check .
npx --no-install tsc -p tsconfig.json --noEmit
echo "== tests"
node scripts/run-tests.mjs "$@"
