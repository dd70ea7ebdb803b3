"""Logs a user in to a running kfsec and prints `COOKIE=<authservice_session>` and
`TOKEN=<ID token>`: the browser flow (GET / → login form → POST → callback) for the cookie, and
the authorization-code flow with PKCE of the public client `kfp-test-cli` for the ID token.

Usage: python login.py BASE CA_FILE EMAIL   (the password is read from stdin)
"""

import base64
import hashlib
import re
import secrets
import sys
import urllib.parse

import requests

REDIRECT = "http://127.0.0.1:5555/cb"
CLIENT = "kfp-test-cli"


def main():
    base, ca, email = sys.argv[1:4]
    password = sys.stdin.readline().rstrip("\n")

    # Browser leg: the session cookie.
    s = requests.Session()
    s.verify = ca
    s.trust_env = False
    r = s.get(base + "/", allow_redirects=True)
    if "/auth/local/login" not in r.url:
        raise SystemExit(f"login form not reached: {r.url} {r.status_code}")
    r = s.post(r.url, data={"login": email, "password": password}, allow_redirects=True)
    cookie = s.cookies.get("authservice_session")
    if not cookie:
        raise SystemExit(f"no session cookie after login ({r.status_code} {r.url})")

    # Code flow with PKCE: the ID token.
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    t = requests.Session()
    t.verify = ca
    t.trust_env = False
    q = urllib.parse.urlencode({
        "client_id": CLIENT, "redirect_uri": REDIRECT, "response_type": "code",
        "scope": "openid email groups", "state": "x",
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    r = t.get(f"{base}/dex/auth/local?{q}", allow_redirects=False)
    login = urllib.parse.urljoin(base, r.headers["Location"])
    r = t.post(login, data={"login": email, "password": password}, allow_redirects=False)
    loc = r.headers.get("Location", "")
    while loc and not loc.startswith(REDIRECT):
        r = t.get(urllib.parse.urljoin(base, loc), allow_redirects=False)
        if r.status_code == 200 and 'name="approval"' in r.text:
            m = re.search(r'name="req" value="([^"]*)"', r.text)
            r = t.post(r.url, data={"req": m.group(1) if m else "", "approval": "approve"}, allow_redirects=False)
        loc = r.headers.get("Location", "")
    codes = urllib.parse.parse_qs(urllib.parse.urlparse(loc).query).get("code")
    if not codes:
        raise SystemExit(f"no code: {r.status_code} {loc!r} {re.sub(chr(60)+'[^>]*>', ' ', r.text)[-600:]}")
    code = codes[0]
    r = t.post(base + "/dex/token", data={
        "grant_type": "authorization_code", "client_id": CLIENT, "code": code,
        "redirect_uri": REDIRECT, "code_verifier": verifier,
    })
    r.raise_for_status()
    print(f"COOKIE={cookie}")
    print(f"TOKEN={r.json()['id_token']}")


if __name__ == "__main__":
    main()
