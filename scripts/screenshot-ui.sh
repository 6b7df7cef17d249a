#!/usr/bin/env bash
# Takes docs/streamlit-app.png from a real run: chatgate and the Streamlit app
# (make ui's launcher) on a throwaway data folder, a user with two earlier
# chats, then headless Chromium logs in and chats (scripts/screenshot-ui.js).
# Needs .venv with the ui extra (make ui or make test), node, and Debian's
# chromium (apt-get install chromium). Ports 8061 and 8561.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/streamlit-app.png}
command -v node >/dev/null || { echo "node is needed (apt-get install nodejs npm)"; exit 2; }
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "chromium is needed (apt-get install chromium)"; exit 2; }
work=$(mktemp -d)
(cd "$work" && npm init -y >/dev/null && npm install --silent playwright-core >/dev/null)
(cd "$work" && BCRYPT_ROUNDS=4 "$root/.venv/bin/python" -m chatgate_ui.launch \
  --port 8061 --ui-port 8561 --no-browser >"$work/launch.log" 2>&1) &
launcher=$!
trap 'kill $launcher 2>/dev/null; wait $launcher 2>/dev/null; rm -rf "$work"' EXIT
B=http://127.0.0.1:8061
for _ in $(seq 150); do curl -sf http://127.0.0.1:8561/_stcore/health >/dev/null && break; sleep 0.2; done
json=(-H 'Content-Type: application/json')
email=grace@example.com password="a long passphrase"
curl -sf "${json[@]}" -X POST $B/auth/register \
  -d "{\"email\": \"$email\", \"password\": \"$password\", \"display_name\": \"Grace\"}" >/dev/null
token=$(curl -sf "${json[@]}" -X POST $B/auth/login -d "{\"email\": \"$email\", \"password\": \"$password\"}" \
  | "$root/.venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
for chat in "Trip to Lisbon|Plan three days in Lisbon for two." "Birthday ideas|Ideas for a surprise party?"; do
  curl -sf "${json[@]}" -X POST $B/chat/session/new -H "Authorization: Bearer $token" \
    -d "{\"title\": \"${chat%%|*}\", \"initial_message\": \"${chat#*|}\"}" >/dev/null
done
NODE_PATH="$work/node_modules" node "$root/scripts/screenshot-ui.js" http://127.0.0.1:8561 \
  "$email" "$password" "$out"
