#!/usr/bin/env bash
# Real upstream identity providers for the end-to-end tests and the login bench, shared by
# tests/browser/federated.mjs, tests/kfp/run.sh and bench/login.sh:
#
#   - an upstream kfsec (a second real kfsec process) as the OpenID provider of the `oidc`
#     connector: a static user with groups and a static client whose redirect URI is the
#     downstream kfsec's <issuer>/callback;
#   - Debian's OpenLDAP slapd with tests/fixtures/ldap/directory.ldif (the directory the Rust
#     tests use too, crates/kfsec/tests/it/slapd.rs), over ldaps with a certificate issued by the
#     upstream kfsec's CA (`kfsec cert issue`), plus a plain port for ldap-utils (ldapdelete);
#   - tests/fixtures/fake_entra.py, an Entra ID + Microsoft Graph shaped provider (plain HTTP on
#     loopback) for the `microsoft` connector: its authorize endpoint redirects straight back (a
#     signed-in Entra session) for the user in DIR/entra/directory.json.
#
#   bash scripts/federation-fixtures.sh start DIR DOWNSTREAM_ISSUER   # e.g. https://localhost:8443/dex
#   bash scripts/federation-fixtures.sh stop DIR
#
# `start` returns once both answer and writes into DIR:
#   fixtures.env       KEY=value lines (bash-quoted) for `source`
#   fixtures.json      the same as one JSON object (for node)
#   connectors.yaml    the downstream kfsec's `connectors:` list (ids `ldap`, `upstream` and
#                      `microsoft`), to
#                      append to its config
#   pids               the processes started (upstream kfsec, slapd, fake Entra); `stop` ends
#                      exactly these
# Everything binds 127.0.0.1 on free ports. env: KFSEC_BIN (default target/debug/kfsec).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KFSEC_BIN="${KFSEC_BIN:-$ROOT/target/debug/kfsec}"
LDIF="$ROOT/tests/fixtures/ldap/directory.ldif"
SLAPD=/usr/sbin/slapd
SLAPADD=/usr/sbin/slapadd

# The directory's fixed entries (tests/fixtures/ldap/directory.ldif).
LDAP_SUFFIX="dc=example,dc=org"
LDAP_ROOT_DN="cn=admin,dc=example,dc=org"
LDAP_ROOT_PW="admin-pw"
LDAP_SERVICE_DN="cn=kfsec,ou=services,dc=example,dc=org"
LDAP_SERVICE_PW="service-pw"
# A user with a non-ASCII name and password, in `admins` and (nested) `platform`.
LDAP_USER="jürgen"
LDAP_PASSWORD="pässwörd (ü)"
LDAP_EMAIL="juergen@example.org"
LDAP_DN="uid=jürgen,ou=people,dc=example,dc=org"
LDAP_GROUPS="admins platform"
# A second directory user (groups admins, platform, developers).
LDAP_USER2="alice"
LDAP_PASSWORD2="alice-pw"
LDAP_EMAIL2="alice@example.org"
# The upstream kfsec's static user.
UPSTREAM_EMAIL="upstream.user@example.net"
UPSTREAM_PASSWORD="upstream password 1"
UPSTREAM_GROUPS="ml-team data-science"
UPSTREAM_CLIENT_ID="kfsec-downstream"
# The fake Entra tenant (tests/fixtures/fake_entra.py): the app registration, the signed-in user
# (a mixed-case UPN: the connector's emailToLowercase makes the Kubeflow user id) and their
# groups, three of them so that getMemberGroups (2 ids a page) sends one @odata.nextLink; the
# directory's other user and group must not show up.
FAKE_ENTRA="$ROOT/tests/fixtures/fake_entra.py"
MS_TENANT="7c4e1a2b-9d3f-4e5a-8b6c-0d1e2f3a4b5c"
MS_CLIENT_ID="0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
MS_USER_ID="5f8e2d1c-3b4a-4c9d-8e7f-6a5b4c3d2e1f"
MS_NAME="Zoë Okafor"
MS_UPN="Zoe.Okafor@Contoso.example"
MS_GROUPS="ML Engineers,kubeflow-admins,All Staff" # display names, comma-separated

log() { echo "federation-fixtures: $*" >&2; }
die() { log "$*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_ready() { # PID URL SECONDS LOG
  local pid="$1" url="$2" secs="$3" logf="$4"
  for _ in $(seq $((secs * 20))); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; die "process $pid exited while starting ($url)"; }
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; then return 0; fi
    sleep 0.05
  done
  tail -20 "$logf" >&2
  die "$url did not answer within ${secs}s"
}

wait_port() { # PID PORT SECONDS LOG
  local pid="$1" port="$2" secs="$3" logf="$4"
  for _ in $(seq $((secs * 20))); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; die "process $pid exited while starting (port $port)"; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  tail -20 "$logf" >&2
  die "nothing listens on $port after ${secs}s"
}

stop() { # DIR
  local dir="$1" pid
  [ -f "$dir/pids" ] || return 0
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$dir/pids"
  while read -r pid; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done <"$dir/pids"
  rm -f "$dir/pids"
}

start() { # DIR DOWNSTREAM_ISSUER
  local dir="$1" downstream="${2%/}"
  [ -x "$KFSEC_BIN" ] || die "no kfsec binary at $KFSEC_BIN (cargo build -p kfsec, or set KFSEC_BIN)"
  [ -x "$SLAPD" ] && [ -x "$SLAPADD" ] && command -v ldapdelete >/dev/null ||
    die "slapd/ldap-utils missing: bash scripts/install-test-deps.sh"
  case "$downstream" in https://*) ;; *) die "DOWNSTREAM_ISSUER must be an https URL, got $downstream" ;; esac
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  : >"$dir/pids"
  # Whatever fails from here stops what was started.
  trap 'stop "$dir"' ERR

  # --- upstream kfsec -----------------------------------------------------------------------
  # On 127.0.0.1 while the downstream is on localhost: another host, as an identity provider is,
  # so the two keep apart the cookies a browser holds for them (cookies ignore the port).
  local up="$dir/upstream" up_port up_admin secret hash
  mkdir -p "$up"
  up_port="$(free_port)"
  up_admin="$(free_port)"
  secret="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
  hash="$(printf '%s\n' "$UPSTREAM_PASSWORD" | "$KFSEC_BIN" hash-password)"
  cat >"$up/kfsec.yaml" <<EOF
apiVersion: kfsec/v1
publicURL: https://127.0.0.1:$up_port
staticClients:
- id: $UPSTREAM_CLIENT_ID
  name: Downstream kfsec
  secret: $secret
  redirectURIs: ["$downstream/callback"]
staticPasswords:
- email: $UPSTREAM_EMAIL
  hash: "$hash"
  username: upstream-user
  userID: "u-4711"
  groups: [$(echo "$UPSTREAM_GROUPS" | sed 's/ /, /g')]
oauth2:
  skipApprovalScreen: true
loginProtection:
  maxFailuresPerAccount: 1000000
  maxFailuresPerAddress: 1000000
EOF
  RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 "$KFSEC_BIN" serve --config "$up/kfsec.yaml" --data-dir "$up/data" \
    --https-addr "127.0.0.1:$up_port" --admin-addr "127.0.0.1:$up_admin" --webhook-addr 127.0.0.1:0 \
    >"$up/kfsec.out" 2>"$up/kfsec.log" </dev/null &
  echo $! >>"$dir/pids"
  wait_ready "$!" "http://127.0.0.1:$up_admin/readyz" 60 "$up/kfsec.log"

  # --- slapd (ldaps with a certificate from the upstream kfsec's CA) ---------------------------
  local sd="$dir/slapd" ldaps_port ldap_port
  mkdir -p "$sd/db"
  "$KFSEC_BIN" cert issue --service localhost --namespace ldap --out "$sd/tls" --data-dir "$up/data" >/dev/null
  ldaps_port="$(free_port)"
  ldap_port="$(free_port)"
  cat >"$sd/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile $sd/slapd.pid
argsfile $sd/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile $sd/tls/ca.crt
TLSCertificateFile $sd/tls/tls.crt
TLSCertificateKeyFile $sd/tls/tls.key
TLSVerifyClient never
access to attrs=userPassword
  by anonymous auth
  by * none
access to *
  by * read
database mdb
maxsize 10485760
suffix "$LDAP_SUFFIX"
rootdn "$LDAP_ROOT_DN"
rootpw $LDAP_ROOT_PW
directory $sd/db
index objectClass eq
index uid eq
index member eq
index memberUid eq
EOF
  "$SLAPADD" -f "$sd/slapd.conf" -l "$LDIF" >"$sd/slapadd.log" 2>&1 || { cat "$sd/slapadd.log" >&2; die "slapadd failed"; }
  "$SLAPD" -h "ldaps://127.0.0.1:$ldaps_port/ ldap://127.0.0.1:$ldap_port/" -f "$sd/slapd.conf" -d 0 \
    </dev/null >/dev/null 2>"$sd/slapd.log" &
  echo $! >>"$dir/pids"
  wait_port "$!" "$ldaps_port" 15 "$sd/slapd.log"
  wait_port "$!" "$ldap_port" 15 "$sd/slapd.log"

  # --- fake Entra ID + Graph -------------------------------------------------------------------
  local ms="$dir/entra" ms_port ms_secret
  mkdir -p "$ms"
  ms_port="$(free_port)"
  ms_secret="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
  MS_USER_ID="$MS_USER_ID" MS_NAME="$MS_NAME" MS_UPN="$MS_UPN" MS_GROUPS="$MS_GROUPS" python3 -c '
import json, os
groups = [{"id": "a1000000-0000-4000-8000-%012d" % (i + 1), "displayName": n, "securityEnabled": i != 2}
          for i, n in enumerate(os.environ["MS_GROUPS"].split(","))]
print(json.dumps({"users": [
  {"id": os.environ["MS_USER_ID"], "displayName": os.environ["MS_NAME"],
   "userPrincipalName": os.environ["MS_UPN"], "groups": groups},
  {"id": "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d", "displayName": "Other User",
   "userPrincipalName": "other@contoso.example",
   "groups": [{"id": "a1000000-0000-4000-8000-000000000009", "displayName": "Finance", "securityEnabled": True}]},
]}, ensure_ascii=False, indent=1))' >"$ms/directory.json"
  FAKE_ENTRA_CLIENT_SECRET="$ms_secret" python3 "$FAKE_ENTRA" "$ms_port" --tenant "$MS_TENANT" --client-id "$MS_CLIENT_ID" \
    --redirect-uri "$downstream/callback" --users "$ms/directory.json" --page-size 2 \
    </dev/null >/dev/null 2>"$ms/fake_entra.log" &
  echo $! >>"$dir/pids"
  wait_ready "$!" "http://127.0.0.1:$ms_port/_fake/requests" 10 "$ms/fake_entra.log"

  # --- the downstream's connectors ------------------------------------------------------------
  cat >"$dir/connectors.yaml" <<EOF
connectors:
- type: ldap
  id: ldap
  name: Corporate LDAP
  config:
    host: localhost:$ldaps_port
    rootCA: $sd/tls/ca.crt
    bindDN: $LDAP_SERVICE_DN
    bindPW: $LDAP_SERVICE_PW
    usernamePrompt: Directory user
    userSearch:
      baseDN: ou=people,$LDAP_SUFFIX
      filter: (objectClass=inetOrgPerson)
      username: uid
      idAttr: uid
      emailAttr: mail
      nameAttr: cn
      preferredUsernameAttr: displayName
    groupSearch:
      baseDN: ou=groups,$LDAP_SUFFIX
      filter: (|(objectClass=groupOfNames)(objectClass=posixGroup))
      userMatchers:
      - userAttr: DN
        groupAttr: member
        recursionGroupAttr: member
      - userAttr: uid
        groupAttr: memberUid
      nameAttr: cn
- type: oidc
  id: upstream
  name: Upstream kfsec
  config:
    issuer: https://127.0.0.1:$up_port/dex
    clientID: $UPSTREAM_CLIENT_ID
    clientSecret: $secret
    redirectURI: $downstream/callback
    rootCAs: [$up/data/pki/ca.crt]
    scopes: [profile, email, groups, offline_access]
    insecureEnableGroups: true
- type: microsoft
  id: microsoft
  name: Contoso Entra ID
  config:
    clientID: $MS_CLIENT_ID
    clientSecret: $ms_secret
    redirectURI: $downstream/callback
    tenant: $MS_TENANT
    apiURL: http://127.0.0.1:$ms_port
    graphURL: http://127.0.0.1:$ms_port
    emailToLowercase: true
EOF

  local -a vars=(
    UPSTREAM_ISSUER="https://127.0.0.1:$up_port/dex" UPSTREAM_ADMIN="http://127.0.0.1:$up_admin"
    UPSTREAM_DATA="$up/data" UPSTREAM_CA="$up/data/pki/ca.crt" UPSTREAM_CLIENT_ID="$UPSTREAM_CLIENT_ID"
    UPSTREAM_CLIENT_SECRET="$secret" UPSTREAM_EMAIL="$UPSTREAM_EMAIL" UPSTREAM_PASSWORD="$UPSTREAM_PASSWORD"
    UPSTREAM_GROUPS="$UPSTREAM_GROUPS"
    LDAPS_URI="ldaps://localhost:$ldaps_port" LDAP_URI="ldap://127.0.0.1:$ldap_port" LDAP_CA="$sd/tls/ca.crt"
    LDAP_ROOT_DN="$LDAP_ROOT_DN" LDAP_ROOT_PW="$LDAP_ROOT_PW"
    LDAP_USER="$LDAP_USER" LDAP_PASSWORD="$LDAP_PASSWORD" LDAP_EMAIL="$LDAP_EMAIL" LDAP_DN="$LDAP_DN"
    LDAP_GROUPS="$LDAP_GROUPS" LDAP_USER2="$LDAP_USER2" LDAP_PASSWORD2="$LDAP_PASSWORD2" LDAP_EMAIL2="$LDAP_EMAIL2"
    MS_URL="http://127.0.0.1:$ms_port" MS_TENANT="$MS_TENANT" MS_CLIENT_ID="$MS_CLIENT_ID" MS_USER_ID="$MS_USER_ID"
    MS_UPN="$MS_UPN" MS_EMAIL="$(printf '%s' "$MS_UPN" | tr '[:upper:]' '[:lower:]')" MS_GROUPS="$MS_GROUPS"
    CONNECTORS_YAML="$dir/connectors.yaml"
  )
  local kv
  : >"$dir/fixtures.env"
  for kv in "${vars[@]}"; do printf '%s=%q\n' "${kv%%=*}" "${kv#*=}" >>"$dir/fixtures.env"; done
  printf '%s\0' "${vars[@]}" | python3 -c '
import json, sys
kv = [x.split("=", 1) for x in sys.stdin.buffer.read().decode().split("\0") if x]
print(json.dumps(dict(kv), ensure_ascii=False, indent=1))' >"$dir/fixtures.json"
  trap - ERR
  log "upstream kfsec https://127.0.0.1:$up_port/dex, slapd ldaps://localhost:$ldaps_port (plain $ldap_port), fake Entra http://127.0.0.1:$ms_port; $dir/fixtures.env"
}

case "${1:-}" in
  start) [ $# -eq 3 ] || die "usage: $0 start DIR DOWNSTREAM_ISSUER"; start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 start DIR DOWNSTREAM_ISSUER | stop DIR" ;;
esac
