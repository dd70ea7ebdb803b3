"""The Kubeflow docs' KFPClientManager login recipe against kfsec, step by step over plain HTTP
(written here in our own words; the steps are the ones the recipe takes), then the kfp SDK with
the cookies it collected, then the run link the SDK prints.

The recipe: GET <host>/pipeline following redirects, which must end at 200 after at least one
redirect (at Dex's login form: `.../auth` becomes `.../auth/local`, a path ending
`/auth/<connector>/login` is the form itself, anything else is followed once more); POST
`login` and `password` to the form following redirects, which must end at 200 after at least one
redirect (a final `.../approval` page is approved with `approval=approve`); every cookie of the
session then goes to `kfp.Client(host=<host>/pipeline, cookies="k=v; k2=v2")`.

Usage (run.sh does this): python client_manager.py
Environment: KFP_BASE, KFP_CA, KFP_CM_USER, KFP_CM_PASSWORD, KFP_CM_NAMESPACE; optional
KFP_CM_RUN_OUT, a file that gets the run's id, name and the "Run details" link the SDK printed
(tests/browser/pipeline.mjs then opens that link in Chromium).
Prints one line per check and a closing `RESULT passed=N failed=M`.
"""

import contextlib
import io
import json
import os
import re
import traceback
from urllib.parse import urlsplit

import requests

BASE = os.environ["KFP_BASE"]
CA = os.environ["KFP_CA"]
USER = os.environ["KFP_CM_USER"]
PASSWORD = os.environ["KFP_CM_PASSWORD"]
NAMESPACE = os.environ["KFP_CM_NAMESPACE"]
HOST = BASE + "/pipeline"

PASSED = 0
FAILED = 0
SEEN = {}


def check(name, fn):
    global PASSED, FAILED
    try:
        fn()
        PASSED += 1
        print(f"  ok   {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        FAILED += 1
        print(f"  FAIL {name}: {e}", flush=True)
        traceback.print_exc(limit=3)


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def recipe_login():
    s = requests.Session()
    s.verify = CA
    r = s.get(HOST, allow_redirects=True)
    expect(r.status_code == 200, f"GET {HOST}: {r.status_code}")
    expect(len(r.history) > 0, "the API URL did not redirect to the login")
    at = urlsplit(r.url)
    if re.search(r"/auth$", at.path):
        at = at._replace(path=at.path + "/local")
    if re.search(r"/auth/.*/login$", at.path):
        form = at.geturl()
    else:
        r = s.get(at.geturl(), allow_redirects=True)
        expect(r.status_code == 200, f"GET {at.geturl()}: {r.status_code}")
        form = r.url
    expect(re.search(r"/auth/.*/login$", urlsplit(form).path), f"not at a login form: {form}")
    r = s.post(form, data={"login": USER, "password": PASSWORD}, allow_redirects=True)
    expect(r.status_code == 200, f"POST {form}: {r.status_code}")
    expect(len(r.history) > 0, "no redirect after the login POST: credentials refused?")
    if re.search(r"/approval$", urlsplit(r.url).path):
        r = s.post(r.url, data={"approval": "approve"}, allow_redirects=True)
        expect(r.status_code == 200, f"approval: {r.status_code}")
    landed = urlsplit(r.url)
    expect(landed.path in ("/pipeline", "/pipeline/"), f"landed on {r.url}, not /pipeline")
    expect("text/html" in r.headers.get("content-type", ""), r.headers.get("content-type"))
    SEEN["cookies"] = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    expect("authservice_session=" in SEEN["cookies"], "no session cookie")


def sdk_with_cookies():
    import kfp

    c = kfp.Client(host=HOST, cookies=SEEN["cookies"], ssl_ca_cert=CA)
    name = "client-manager-exp"
    e = c.create_experiment(name, namespace=NAMESPACE)
    listed = c.list_experiments(namespace=NAMESPACE)
    names = [x.display_name for x in (listed.experiments or [])]
    expect(name in names, names)
    pipeline = os.environ.get("KFP_PIPELINE")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        r = c.create_run_from_pipeline_package(pipeline, arguments={"msg": "from the recipe"},
                                               run_name="client-manager-run", experiment_name=name,
                                               namespace=NAMESPACE)
    SEEN["run"] = r.run_id
    SEEN["exp"] = e.experiment_id
    links = re.findall(r"^Run details: (\S+)$", printed.getvalue(), re.M)
    expect(links == [f"{HOST}/#/runs/details/{r.run_id}"], printed.getvalue())
    out = os.environ.get("KFP_CM_RUN_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"run_id": r.run_id, "name": "client-manager-run", "link": links[0]}, f)


def run_link_lands():
    # The SDK prints <host>/#/runs/details/<id>; the fragment never reaches a server, and kfsec's
    # script turns it into this path (which works without the script, too).
    s = requests.Session()
    s.verify = CA
    headers = {"Cookie": SEEN["cookies"]}
    r = s.get(f"{HOST}/runs/details/{SEEN['run']}", headers=headers, allow_redirects=False)
    expect(r.status_code == 200, r.status_code)
    expect(SEEN["run"] in r.text and "client-manager-run" in r.text, r.text[:400])
    r = s.get(f"{HOST}/", headers=headers, allow_redirects=False)
    expect(r.status_code == 200 and f"/pipeline/runs/details/{SEEN['run']}" in r.text, r.text[:400])
    js = s.get(f"{HOST}/kfsec-links.js", headers=headers, allow_redirects=False)
    expect(js.headers.get("content-type", "").startswith("text/javascript"), js.headers)


def main():
    check("KFPClientManager recipe: GET /pipeline → Dex login form → POST → lands on /pipeline", recipe_login)
    if "cookies" in SEEN:
        check("kfp.Client(host=…/pipeline, cookies=…) lists and creates", sdk_with_cookies)
    if "run" in SEEN:
        check("the run's page (the SDK's Run details link) shows the run", run_link_lands)
    print(f"RESULT passed={PASSED} failed={FAILED}", flush=True)


if __name__ == "__main__":
    main()
