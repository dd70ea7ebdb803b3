"""Gets an ID token for a federated user from a running kfsec and prints `TOKEN=<ID token>`.

  python fed_login.py BASE CA_BUNDLE CLIENT_ID CLIENT_SECRET password USERNAME
      the resource-owner password grant (Dex's `oauth2.passwordConnector`: here the ldap
      connector), as Dex CLI users log in;
  python fed_login.py BASE CA_BUNDLE CLIENT_ID CLIENT_SECRET browser CONNECTOR_ID USERNAME
      the authorization-code flow with PKCE through `/dex/auth?connector_id=CONNECTOR_ID`: for an
      oidc connector the upstream's own login form is filled in (on the upstream's origin),
      the browser comes back through kfsec's /dex/callback, the approval is given, and the code
      is exchanged.
The password is read from stdin. CA_BUNDLE must hold kfsec's CA and the upstream's.
"""

import base64
import hashlib
import re
import secrets
import sys
import urllib.parse

import requests

REDIRECT = "http://127.0.0.1:5555/cb"
SCOPE = "openid profile email groups"


def session(ca):
    s = requests.Session()
    s.verify = ca
    s.trust_env = False
    return s


def password_grant(base, ca, client, secret, user, password):
    r = session(ca).post(base + "/dex/token", auth=(client, secret), data={
        "grant_type": "password", "username": user, "password": password, "scope": SCOPE,
    })
    if r.status_code != 200:
        raise SystemExit(f"password grant: {r.status_code} {r.text[:300]}")
    return r.json()["id_token"]


def browser_flow(base, ca, client, secret, connector, user, password):
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    s = session(ca)
    q = urllib.parse.urlencode({
        "client_id": client, "redirect_uri": REDIRECT, "response_type": "code", "scope": SCOPE,
        "state": "fed-state-1", "code_challenge": challenge, "code_challenge_method": "S256",
        "connector_id": connector,
    })
    url = f"{base}/dex/auth?{q}"
    posted = False
    for _ in range(20):
        if url.startswith(REDIRECT):
            break
        r = s.get(url, allow_redirects=False)
        if r.is_redirect:
            url = urllib.parse.urljoin(url, r.headers["Location"])
            continue
        if r.status_code == 200 and 'name="login"' in r.text and not posted:
            # A login form: kfsec's (password connector) or the upstream's (oidc connector).
            r = s.post(url, data={"login": user, "password": password}, allow_redirects=False)
            posted = True
        elif r.status_code == 200 and 'name="approval"' in r.text:
            m = re.search(r'name="req" value="([^"]*)"', r.text)
            r = s.post(url, data={"req": m.group(1) if m else "", "approval": "approve"}, allow_redirects=False)
        if not r.is_redirect:
            text = re.sub("<[^>]*>", " ", r.text)
            raise SystemExit(f"login stopped at {url}: {r.status_code} {' '.join(text.split())[-300:]}")
        url = urllib.parse.urljoin(url, r.headers["Location"])
    q = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    if "code" not in q or q.get("state") != ["fed-state-1"]:
        raise SystemExit(f"no code for the client: {url}")
    r = s.post(base + "/dex/token", auth=(client, secret), data={
        "grant_type": "authorization_code", "code": q["code"][0], "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    })
    if r.status_code != 200:
        raise SystemExit(f"code exchange: {r.status_code} {r.text[:300]}")
    return r.json()["id_token"]


def main():
    base, ca, client, secret, how = sys.argv[1:6]
    password = sys.stdin.readline().rstrip("\n")
    if how == "password":
        token = password_grant(base, ca, client, secret, sys.argv[6], password)
    elif how == "browser":
        token = browser_flow(base, ca, client, secret, sys.argv[6], sys.argv[7], password)
    else:
        raise SystemExit(f"unknown flow {how}")
    print(f"TOKEN={token}")


if __name__ == "__main__":
    main()
