#!/usr/bin/env bash
# Checks, in a real browser with no internet, that /docs -> Authorize ->
# GET /chat/sessions answers 200. Needs a running chatgate (make run), node,
# and Debian's chromium (apt-get install chromium).
# Usage: scripts/check-docs-offline.sh [BASE_URL]
set -euo pipefail
base=${1:-http://127.0.0.1:8009}
here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null || { echo "node is needed (apt-get install nodejs npm)"; exit 2; }
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "chromium is needed (apt-get install chromium)"; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --silent playwright-core >/dev/null)
email="docs-check-$(date +%s)@example.com"
password="docs check password"
curl -sf -X POST "$base/auth/register" -H 'Content-Type: application/json' \
  -d "{\"email\": \"$email\", \"password\": \"$password\"}" >/dev/null
NODE_PATH="$work/node_modules" node "$here/check-docs-offline.js" "$base" "$email" "$password"
