#!/usr/bin/env python3
"""Queries a Prometheus that scrapes kfsec (tests/prometheus/run.sh) until each documented series
is there with a sensible value: `checks.py http://127.0.0.1:PORT`. Waits at most DEADLINE seconds
in all. Prints one line per check and `RESULT passed=N failed=M`.
"""
import json
import sys
import time
import urllib.parse
import urllib.request

DEADLINE = 25.0

# (what, PromQL that returns at least one series exactly when the expectation holds)
CHECKS = [
    ("the scrape target is up", 'up{job="kfsec"} == 1'),
    ("kfsec_build_info has version and commit", 'kfsec_build_info{version!="",commit!=""} == 1'),
    ("kfsec_ready is 1", "kfsec_ready == 1"),
    ("a failed login counted", 'kfsec_logins_total{connector="local",outcome="failure"} >= 1'),
    ("a successful login counted", 'kfsec_logins_total{connector="local",outcome="success"} >= 1'),
    ("a password-grant token counted", 'kfsec_tokens_issued_total{grant_type="password"} >= 1'),
    ("an API denial counted", 'kfsec_authz_decisions_total{surface="api",decision="deny"} >= 1'),
    ("a proxied route's denial counted", 'kfsec_authz_decisions_total{surface="proxy",decision="deny"} >= 1'),
    ("a proxied route's allow counted", 'kfsec_authz_decisions_total{surface="proxy",decision="allow"} >= 1'),
    ("the front door's certificate has time left", 'kfsec_certificate_expiry_seconds{name="front-door"} > 86400'),
    ("the CA has time left", 'kfsec_certificate_expiry_seconds{name="ca"} > 86400'),
    ("the gateway's client certificate has time left", 'kfsec_certificate_expiry_seconds{name="gateway-workload"} > 0'),
    ("a webhook certificate has time left", 'kfsec_certificate_expiry_seconds{name=~"webhook-.+"} > 0'),
    ("the signing key's age is known", "kfsec_signing_key_age_seconds >= 0 and kfsec_signing_key_age_seconds < 86400"),
    ("sessions are counted", "kfsec_sessions_active >= 0"),
    ("lockouts are counted", "kfsec_lockouts_active >= 0"),
    ("store reads are timed", 'kfsec_store_operation_duration_seconds_count{op="get"} > 0'),
    ("store writes are timed", 'kfsec_store_operation_duration_seconds_count{op=~"create|put|update"} > 0'),
    ("API requests have their own route label", 'kfsec_http_requests_total{route="api",code="403"} >= 1'),
    ("the token endpoint has its own route label", 'sum(kfsec_http_requests_total{route="dex-token"}) >= 2'),
    ("the proxied route is labelled by its prefix", 'kfsec_http_requests_total{route="/app/",code="502"} >= 1'),
    ("latency by route", 'kfsec_http_request_duration_seconds_count{route="api"} >= 1'),
    ("listener metrics", "kfsec_listener_connections_open >= 0"),
    ("no 'other' route for the traffic above", 'absent(kfsec_http_requests_total{route="other"})'),
]


def query(base: str, q: str):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    return body.get("data", {}).get("result", [])


def main() -> int:
    base = sys.argv[1]
    start = time.monotonic()
    # Prometheus up and its first scrapes in.
    while time.monotonic() - start < DEADLINE:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    passed = failed = 0
    for what, q in CHECKS:
        result, last_error = [], ""
        while True:
            try:
                result = query(base, q)
            except OSError as e:
                last_error = str(e)
            if result or time.monotonic() - start > DEADLINE:
                break
            time.sleep(0.5)
        if result:
            passed += 1
            print(f"ok   {what}: {q} -> {[r['value'][1] for r in result][:4]}")
        else:
            failed += 1
            print(f"FAIL {what}: {q} returned nothing {last_error}")
    # The alert rules are loaded, none firing.
    try:
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as r:
            groups = json.load(r)["data"]["groups"]
        names = sorted(rule["name"] for g in groups for rule in g["rules"])
        firing = sorted(rule["name"] for g in groups for rule in g["rules"] if rule.get("state") == "firing")
        ok = len(names) == 6 and not firing
        print(f"{'ok  ' if ok else 'FAIL'} alert rules loaded: {names}, firing: {firing}")
    except (OSError, KeyError) as e:
        ok = False
        print(f"FAIL alert rules: {e}")
    passed, failed = passed + ok, failed + (not ok)
    print(f"RESULT passed={passed} failed={failed}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
