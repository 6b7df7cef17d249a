#!/usr/bin/env bash
# Walks the token lifecycle against a fresh chatgate, as a new user would:
# two devices log in, one ends the other, an old refresh token is reused and
# its login dies while the other lives, then a token minted by real
# djangorestframework-simplejwt creates and lists a session.
# Needs .venv with the django-test extra (make test installs it). Port 8019.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
work=$(mktemp -d)
django_key=$("$py" -c "import secrets; print(secrets.token_urlsafe(50))")
(cd "$work" && EXTERNAL_JWT_SECRET=$django_key BCRYPT_ROUNDS=4 \
  "$root/.venv/bin/uvicorn" app.main:app --app-dir "$root" --port 8019 --no-proxy-headers \
  >"$work/server.log" 2>&1) &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
B=http://127.0.0.1:8019
for _ in $(seq 50); do curl -sf $B/healthz >/dev/null && break; sleep 0.2; done
field() { "$py" -c "import json, sys; print(json.load(sys.stdin)$1)"; }
json=(-H 'Content-Type: application/json')
creds='{"email": "dev@example.com", "password": "two devices here"}'

curl -s "${json[@]}" -X POST $B/auth/register -d "$creds" >/dev/null
laptop=$(curl -s "${json[@]}" -A laptop -X POST $B/auth/login -d "$creds")
phone=$(curl -s "${json[@]}" -A phone -X POST $B/auth/login -d "$creds")
laptop_access=$(echo "$laptop" | field '["access_token"]')
laptop_refresh=$(echo "$laptop" | field '["refresh_token"]')
phone_access=$(echo "$phone" | field '["access_token"]')

echo "logins, as the laptop sees them:"
curl -s $B/auth/logins -H "Authorization: Bearer $laptop_access" | "$py" -c '
import json, sys
for login in json.load(sys.stdin)["logins"]:
    print("  ", login["user_agent"], "(current)" if login["current"] else "", login["id"])'
phone_login=$(curl -s $B/auth/logins -H "Authorization: Bearer $laptop_access" \
  | field '["logins"][1]["id"]')
echo "laptop ends the phone's login: $(curl -s -X DELETE $B/auth/logins/$phone_login \
  -H "Authorization: Bearer $laptop_access")"
echo "phone's access token now: $(curl -s $B/auth/me -H "Authorization: Bearer $phone_access")"

phone=$(curl -s "${json[@]}" -A phone -X POST $B/auth/login -d "$creds")
phone_access=$(echo "$phone" | field '["access_token"]')
renewed=$(curl -s "${json[@]}" -X POST $B/auth/refresh -d "{\"refresh_token\": \"$laptop_refresh\"}")
echo "laptop refreshes: success=$(echo "$renewed" | field '["success"]')"
echo "the OLD laptop refresh token again: $(curl -s "${json[@]}" -X POST $B/auth/refresh \
  -d "{\"refresh_token\": \"$laptop_refresh\"}")"
echo "laptop's newest access token: $(curl -s $B/auth/me \
  -H "Authorization: Bearer $(echo "$renewed" | field '["access_token"]')")"
echo "phone (logged in again) still works: $(curl -s -o /dev/null -w '%{http_code}' $B/auth/me \
  -H "Authorization: Bearer $phone_access")"

django_token=$(DJANGO_SECRET_KEY=$django_key "$py" "$root/scripts/mint_django_token.py" 42)
curl -s "${json[@]}" -X POST $B/chat/session/new -H "Authorization: Bearer $django_token" \
  -d '{"title": "From Django"}' >/dev/null
echo "Django user 42 lists: $(curl -s $B/chat/sessions -H "Authorization: Bearer $django_token" \
  | field '["sessions"][0]["title"]') (as $(curl -s $B/auth/me \
  -H "Authorization: Bearer $django_token" | field '["user"]["id"]'))"
