#!/usr/bin/env bash
# Takes docs/streamlit-app.png from a real run: chatgate and the Streamlit app
# (make ui's launcher) on a throwaway data folder, answering through a slow
# streaming model (tests/fake_openai.py), while headless Chromium registers,
# chats, comes back to an earlier chat and watches a reply stream in
# (scripts/screenshot-ui.js). Needs .venv with the ui extra (make ui or
# make test), node, and Debian's chromium (apt-get install chromium).
# Ports 8061, 8062 and 8561.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/streamlit-app.png}
command -v node >/dev/null || { echo "node is needed (apt-get install nodejs npm)"; exit 2; }
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "chromium is needed (apt-get install chromium)"; exit 2; }
work=$(mktemp -d)
(cd "$work" && npm init -y >/dev/null && npm install --silent playwright-core >/dev/null)
(cd "$root" && exec "$root/.venv/bin/python" -m tests.fake_openai --port 8062 >"$work/model.log" 2>&1) &
model=$!
(cd "$work" && BCRYPT_ROUNDS=4 ASSISTANT_PROVIDER=openai OPENAI_BASE_URL=http://127.0.0.1:8062/v1 \
  OPENAI_MODEL=slow exec "$root/.venv/bin/python" -m chatgate_ui.launch \
  --port 8061 --ui-port 8561 --no-browser >"$work/launch.log" 2>&1) &
launcher=$!
trap 'kill $launcher $model 2>/dev/null; wait $launcher 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 150); do curl -sf http://127.0.0.1:8561/_stcore/health >/dev/null && break; sleep 0.2; done
NODE_PATH="$work/node_modules" node "$root/scripts/screenshot-ui.js" http://127.0.0.1:8561 \
  grace@example.com "a long passphrase" "$out"
