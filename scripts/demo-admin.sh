#!/usr/bin/env bash
# Walks the administration story against a fresh chatgate, as a new operator
# would: the first admin from the CLI, a user chatting, the admin disabling
# them (their open session then gets 401), a backup while the service runs,
# and a restore into a fresh data folder that a second server then serves.
# Needs .venv (make setup). Ports 8021 and 8022.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
cg="$root/.venv/bin/chatgate"
work=$(mktemp -d)
servers=()
trap 'kill "${servers[@]}" 2>/dev/null; rm -rf "$work"' EXIT
export BCRYPT_ROUNDS=4
cd "$work"
field() { "$py" -c "import json, sys; print(json.load(sys.stdin)$1)"; }
json=(-H 'Content-Type: application/json')
serve() {  # serve <port> <database url>
  DATABASE_URL=$2 "$cg" serve --port "$1" >"$work/server-$1.log" 2>&1 &
  servers+=($!)
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.2; done
  echo "server on $1 did not start"; cat "$work/server-$1.log"; exit 1
}
token() {  # token <base> <email> <password>
  curl -s "${json[@]}" -X POST "$1/auth/login" -d "{\"email\": \"$2\", \"password\": \"$3\"}" \
    | field '["access_token"]'
}

echo "1. the first admin, before the service ever ran:"
printf 'admin password 1\n' | DATABASE_URL=sqlite:///./data/chatgate.db "$cg" create-user \
  --email admin@example.com --admin
serve 8021 sqlite:///./data/chatgate.db
B=http://127.0.0.1:8021

curl -s "${json[@]}" -X POST $B/auth/register \
  -d '{"email": "ada@example.com", "password": "ada password 1"}' >/dev/null
ada=$(token $B ada@example.com "ada password 1")
session=$(curl -s "${json[@]}" -X POST $B/chat/session/new -H "Authorization: Bearer $ada" \
  -d '{"title": "Ada chats", "initial_message": "remember me"}' | field '["session"]["id"]')
admin=$(token $B admin@example.com "admin password 1")
echo "2. the admin logs in: /auth/me role = $(curl -s $B/auth/me \
  -H "Authorization: Bearer $admin" | field '["user"]["role"]')"
ada_id=$(curl -s "$B/admin/users?email=ada" -H "Authorization: Bearer $admin" \
  | field '["users"][0]["id"]')

echo "3. a backup while the service runs:"
DATABASE_URL=sqlite:///./data/chatgate.db "$cg" backup "$work/backup.db"

echo "4. the admin disables ada: $(curl -s -X POST $B/admin/users/$ada_id/disable \
  -H "Authorization: Bearer $admin" | field '["user"]["disabled"]')"
echo "   ada's open session now answers: $(curl -s -w ' (HTTP %{http_code})' \
  $B/chat/session/$session -H "Authorization: Bearer $ada")"
echo "   ada logging in again: $(curl -s -w ' (HTTP %{http_code})' "${json[@]}" -X POST \
  $B/auth/login -d '{"email": "ada@example.com", "password": "ada password 1"}')"
echo "   stats: $(curl -s $B/admin/stats -H "Authorization: Bearer $admin")"

echo "5. restore the backup into a fresh data folder and serve it:"
DATABASE_URL=sqlite:///./restored/chatgate.db "$cg" restore "$work/backup.db"
serve 8022 sqlite:///./restored/chatgate.db
R=http://127.0.0.1:8022
ada=$(token $R ada@example.com "ada password 1")
echo "   ada (not disabled in the backup) reads her history there: $(curl -s \
  $R/chat/session/$session/history -H "Authorization: Bearer $ada" \
  | "$py" -c 'import json, sys; print([m["content"] for m in json.load(sys.stdin)["messages"]])')"
