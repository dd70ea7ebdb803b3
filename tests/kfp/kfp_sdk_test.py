"""KFP API checks against a running kfsec, with the real kfp SDKs (1.8.22 → v1beta1,
2.14 → v2beta1) and plain HTTP (the issue's curl lines, the report endpoint, bad input).

Usage (run.sh does this): python kfp_sdk_test.py MODE
  MODE = http | v1 | v2 | report | federated (federated.sh sets KFP_FED_*)
Environment: KFP_BASE (https://localhost:PORT), KFP_CA, KFP_USER1_COOKIE, KFP_USER2_COOKIE,
KFP_USER1_TOKEN, KFP_USER2_TOKEN, KFP_AGENT_TOKEN, KFP_OTHER_AUD_TOKEN, KFP_PIPELINE (a package
compiled by the kfp 2 compiler), KFP_STATE (a JSON file shared between modes).
Prints one line per check and a closing `RESULT passed=N failed=M`.
"""

import base64
import json
import os
import sys
import traceback

import requests

BASE = os.environ["KFP_BASE"]
CA = os.environ["KFP_CA"]
HOST = BASE + "/pipeline"
STATE_FILE = os.environ["KFP_STATE"]
PIPELINE = os.environ.get("KFP_PIPELINE", "")

PASSED = 0
FAILED = 0


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


def state():
    try:
        with open(STATE_FILE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def save(**kv):
    s = state()
    s.update(kv)
    with open(STATE_FILE, "w") as f:
        json.dump(s, f)


def cookie(user):
    return "authservice_session=" + os.environ[f"KFP_{user}_COOKIE"]


def denied_text(user, ns, verb, res, name=""):
    return (
        f"User '{user}' is not authorized with reason:  (request: &ResourceAttributes{{Namespace:{ns},"
        f"Verb:{verb},Group:pipelines.kubeflow.org,Version:v1beta1,Resource:{res},Subresource:,Name:{name},}})"
    )


USER1 = "kfp-user1@example.org"
USER2 = "kfp-user2@example.org"


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect_denied(exc_info_fn, user, ns, verb, res, name=""):
    """Runs fn; it must raise the SDK's ApiException with 403 and KFP's PermissionDenied text."""
    try:
        exc_info_fn()
    except Exception as e:  # noqa: BLE001
        status = getattr(e, "status", None)
        body = getattr(e, "body", "") or ""
        expect(status == 403, f"expected 403, got {status}: {body[:300]}")
        text = denied_text(user, ns, verb, res, name)
        expect(text in body, f"PermissionDenied text missing: {body[:400]}")
        expect(type(e).__name__ == "ApiException", f"expected ApiException, got {type(e).__name__}")
        return
    raise AssertionError("the call was not refused")


# ---------------------------------------------------------------------------------------------
# plain HTTP (curl equivalents)


def http_checks():
    s = requests.Session()
    s.verify = CA
    s.trust_env = False
    url = HOST + "/apis/v1beta1/experiments?resource_reference_key.type=NAMESPACE&resource_reference_key.id=user2"

    def seed_forbidden():
        r = s.get(url, headers={"Cookie": cookie("USER1")})
        expect(r.status_code == 403, f"status {r.status_code}: {r.text[:300]}")
        v = r.json()
        expect(v["code"] == 7, v)
        expect(v["error"] == v["message"], v)
        text = denied_text(USER1, "user2", "list", "experiments")
        expect(v["message"].endswith(f"PermissionDenied: {text}: Unauthorized access"), v["message"])
        expect(v["details"] == [{"@type": "type.googleapis.com/google.rpc.Status", "code": 7, "message": text}], v)
        expect("\\u0026ResourceAttributes" in r.text or "&ResourceAttributes" in r.text, r.text)

    def seed_empty():
        r = s.get(url, headers={"Cookie": cookie("USER2")})
        expect(r.status_code == 200, f"status {r.status_code}: {r.text[:300]}")
        expect(r.json() == {}, r.text)
        expect(r.text.strip() == "{}", r.text)

    def no_credentials():
        r = s.get(url)
        expect(r.status_code == 401, r.status_code)
        expect(r.json()["code"] == 16, r.text)

    def bearer_id_token():
        r = s.get(HOST + "/apis/v2beta1/experiments?namespace=user1",
                  headers={"Authorization": "Bearer " + os.environ["KFP_USER1_TOKEN"]})
        expect(r.status_code == 200, f"{r.status_code} {r.text[:200]}")

    def empty_namespace():
        r = s.get(HOST + "/apis/v1beta1/experiments", headers={"Cookie": cookie("USER1")})
        expect(r.status_code == 400, r.status_code)
        expect(r.json()["details"][0]["message"] == "An experiment cannot have an empty namespace in multi-user mode", r.text)

    def healthz():
        r = s.get(HOST + "/apis/v1beta1/healthz", headers={"Cookie": cookie("USER1")})
        expect(r.status_code == 200 and r.json()["multi_user"] is True, r.text)

    def bad_input():
        h = {"Cookie": cookie("USER1")}
        base = HOST + "/apis/v2beta1/experiments?namespace=user1"
        for q in ["&filter=%7Bbroken", "&filter=%7B%22predicates%22%3A%5B%7B%22key%22%3A%22nope%22%2C%22op%22%3A%22EQUALS%22%2C%22string_value%22%3A%22x%22%7D%5D%7D",
                  "&page_token=not-a-token", "&page_size=-3", "&sort_by=a%20b%20c"]:
            r = s.get(base + q, headers=h)
            expect(r.status_code == 400, f"{q}: {r.status_code} {r.text[:200]}")
            expect(r.json()["code"] == 3, r.text)
        up = HOST + "/apis/v2beta1/pipelines/upload?namespace=user1&name=bad"
        r = s.post(up, headers={**h, "Content-Type": "multipart/form-data; boundary=X"}, data=b"--X\r\ngarbage")
        expect(r.status_code == 400 and r.json()["code"] == 3, f"multipart: {r.status_code} {r.text[:200]}")
        r = s.post(up, headers=h, files={"uploadfile": ("p.zip", b"PK\x03\x04not a zip")})
        expect(r.status_code == 400 and r.json()["code"] == 3, f"zip: {r.status_code} {r.text[:200]}")
        r = s.post(up, headers=h, files={"uploadfile": ("p.yaml", b"kind: Pod\n")})
        expect(r.status_code == 400, f"not a pipeline: {r.status_code} {r.text[:200]}")
        big = b"a: " + b"x" * (33 * 1024 * 1024)
        r = s.post(up, headers=h, files={"uploadfile": ("p.yaml", big)})
        expect(r.status_code in (400, 413), f"oversized: {r.status_code} {r.text[:200]}")
        expect(r.json()["code"] == 3, r.text[:200])
        r = s.post(HOST + "/apis/v1beta1/runs", headers={**h, "Content-Type": "application/json"}, data=b"{nope")
        expect(r.status_code == 400 and r.json()["code"] == 3, r.text[:200])

    check("http: user1 listing user2's experiments → 403 with KFP's PermissionDenied JSON", seed_forbidden)
    check("http: user2 listing its empty namespace → 200 and exactly {}", seed_empty)
    check("http: no credentials → 401 (code 16)", no_credentials)
    check("http: a bearer ID token works", bearer_id_token)
    check("http: empty namespace → 400 with KFP's text", empty_namespace)
    check("http: healthz says multi_user", healthz)
    check("http: malformed filter / page token / multipart / package, oversized package → 4xx KFP JSON", bad_input)


def report_checks():
    """After the SDK runs: the persistence agent reports a succeeded workflow."""
    s = requests.Session()
    s.verify = CA
    s.trust_env = False
    st = state()
    run_id = st.get("v2_run_id")

    def wf(phase):
        return {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "hello-pipeline-abcde", "namespace": "user1", "uid": "0b7f-uid",
                         "labels": {"pipeline/runid": run_id}},
            "status": {"phase": phase, "finishedAt": "2024-01-01T00:00:00Z"},
        }

    def run_state():
        r = s.get(HOST + f"/apis/v2beta1/runs/{run_id}", headers={"Cookie": cookie("USER1")})
        expect(r.status_code == 200, r.text[:200])
        return r.json()["state"]

    agent = {"Authorization": "Bearer " + os.environ["KFP_AGENT_TOKEN"]}

    def user_refused():
        for h in ({"Authorization": "Bearer " + os.environ["KFP_USER1_TOKEN"]}, {"Cookie": cookie("USER1")}):
            r = s.post(HOST + "/apis/v1beta1/workflows", headers=h, json=wf("Succeeded"))
            expect(r.status_code == 403, f"{r.status_code} {r.text[:200]}")
            expect(denied_text(USER1, "", "report", "workflows") in r.text, r.text[:300])
        expect(run_state() != "SUCCEEDED", "a user's report changed the run")

    def wrong_audience_refused():
        h = {"Authorization": "Bearer " + os.environ["KFP_OTHER_AUD_TOKEN"]}
        for path in ("/pipeline/apis/v1beta1/workflows", "/apis/v1beta1/workflows"):
            r = s.post(BASE + path, headers=h, json=wf("Succeeded"))
            expect(r.status_code == 401, f"{path}: {r.status_code} {r.text[:200]}")

    def agent_reports():
        expect(run_id, "no run from the v2 SDK test")
        r = s.post(HOST + "/apis/v1beta1/workflows", headers=agent, json=wf("Running"))
        expect(r.status_code == 200, f"{r.status_code} {r.text[:300]}")
        expect(run_state() == "RUNNING", run_state())
        # grpc-gateway's form: the workflow as a JSON string
        r = s.post(HOST + "/apis/v1beta1/workflows", headers=agent, data=json.dumps(json.dumps(wf("Succeeded"))))
        expect(r.status_code == 200, f"{r.status_code} {r.text[:300]}")
        expect(run_state() == "SUCCEEDED", run_state())
        r = s.get(HOST + f"/apis/v1beta1/runs/{run_id}", headers={"Cookie": cookie("USER1")})
        expect(r.json()["run"]["status"] == "Succeeded", r.text[:300])

    def agent_root_path():
        # The persistence agent's own path (outside /pipeline), routed to the KFP API before the
        # Kubernetes API. The front door classifies /apis/… as Kubernetes and accepts only
        # kfsec's default service-account audience there (see the report's caveat).
        h = {"Authorization": "Bearer " + os.environ["KFP_AGENT_DEFAULT_TOKEN"]}
        r = s.post(BASE + "/apis/v1beta1/workflows", headers=h, json=wf("Succeeded"))
        expect(r.status_code == 200, f"{r.status_code} {r.text[:300]}")
        r = s.post(BASE + "/apis/v1beta1/workflows", headers={"Cookie": cookie("USER1")}, json=wf("Succeeded"))
        expect(r.status_code == 403 and r.json()["code"] == 7, f"user on the root path: {r.status_code} {r.text[:200]}")

    check("report: a user's token (bearer or cookie) is refused with PermissionDenied", user_refused)
    check("report: a token with another audience is refused (401)", wrong_audience_refused)
    check("report: the persistence agent's SA token moves the run to SUCCEEDED", agent_reports)
    check("report: POST /apis/v1beta1/workflows (root path): SA allowed, user refused", agent_root_path)


# ---------------------------------------------------------------------------------------------
# kfp 1.8 (v1beta1)


def v1_checks():
    import kfp
    from kfp_server_api.rest import ApiException  # noqa: F401

    expect(kfp.__version__ == "1.8.22", kfp.__version__)
    c1 = kfp.Client(host=HOST, cookies=cookie("USER1"), ssl_ca_cert=CA)
    c1t = kfp.Client(host=HOST, existing_token=os.environ["KFP_USER1_TOKEN"], ssl_ca_cert=CA)
    c2 = kfp.Client(host=HOST, existing_token=os.environ["KFP_USER2_TOKEN"], ssl_ca_cert=CA)
    ids = {}

    def experiment():
        e = c1.create_experiment("sdk18-exp", namespace="user1")
        ids["exp"] = e.id
        again = c1.create_experiment("sdk18-exp", namespace="user1")
        expect(again.id == e.id, "create_experiment did not find the existing experiment by name")
        names = [x.name for x in (c1t.list_experiments(namespace="user1").experiments or [])]
        expect("sdk18-exp" in names, names)
        got = c1.get_experiment(experiment_id=e.id)
        expect(got.resource_references[0].key.id == "user1", got)

    def upload():
        p = c1.upload_pipeline(PIPELINE, pipeline_name="shared-by-user1")
        ids["pipeline"] = p.id
        expect(p.default_version is not None and p.default_version.id, p)
        listed = [x.name for x in (c2.list_pipelines(page_size=100).pipelines or [])]
        expect("shared-by-user1" in listed, f"user2 does not see the shared pipeline: {listed}")
        expect(c1.get_pipeline_id("shared-by-user1") == p.id, "get_pipeline_id")

    def run():
        r = c1.run_pipeline(ids["exp"], "sdk18-run", pipeline_id=ids["pipeline"])
        ids["run"] = r.id
        runs = c1t.list_runs(namespace="user1").runs or []
        expect(any(x.id == r.id for x in runs), [x.id for x in runs])
        runs = c1.list_runs(experiment_id=ids["exp"]).runs or []
        expect(any(x.id == r.id for x in runs), "list by experiment")
        detail = c1.get_run(r.id)
        expect(detail.run.status == "Pending", detail.run.status)
        expect("pipelineInfo" in (detail.run.pipeline_spec.pipeline_manifest or ""), "manifest missing")

    def other_namespace():
        expect_denied(lambda: c1.list_experiments(namespace="user2"), USER1, "user2", "list", "experiments")
        expect_denied(lambda: c1.create_experiment("intruder", namespace="user2"), USER1, "user2", "list", "experiments")
        expect_denied(lambda: c1.list_runs(namespace="user2"), USER1, "user2", "list", "runs")
        e2 = c2.create_experiment("sdk18-user2", namespace="user2")
        expect_denied(lambda: c1.get_experiment(experiment_id=e2.id), USER1, "user2", "get", "experiments", "sdk18-user2")
        expect_denied(lambda: c1.run_pipeline(e2.id, "intruder-run", pipeline_id=ids["pipeline"]), USER1, "user2", "create", "runs")
        expect_denied(lambda: c2.get_run(ids["run"]), USER2, "user1", "get", "runs", "sdk18-run")
        expect_denied(lambda: c2.delete_experiment(ids["exp"]), USER2, "user1", "delete", "experiments", "sdk18-exp")

    check("kfp 1.8: create an experiment in user1, find it by name, list it (cookie and ID token)", experiment)
    check("kfp 1.8: upload a kfp-2-compiled pipeline (shared) — visible to user2", upload)
    check("kfp 1.8: create a run and list runs", run)
    check("kfp 1.8: the same calls on user2's namespace → ApiException 403 with KFP's text", other_namespace)


# ---------------------------------------------------------------------------------------------
# kfp 2.14 (v2beta1)


def v2_checks():
    import kfp

    expect(kfp.__version__.startswith("2.14."), kfp.__version__)
    c1 = kfp.Client(host=HOST, cookies=cookie("USER1"), ssl_ca_cert=CA)
    c1t = kfp.Client(host=HOST, existing_token=os.environ["KFP_USER1_TOKEN"], ssl_ca_cert=CA)
    c2 = kfp.Client(host=HOST, existing_token=os.environ["KFP_USER2_TOKEN"], ssl_ca_cert=CA)
    ids = {}

    def healthz():
        expect(c1.get_kfp_healthz().multi_user is True, "multi_user")

    def experiment():
        e = c1.create_experiment("sdk2-exp", namespace="user1")
        ids["exp"] = e.experiment_id
        expect(e.namespace == "user1", e)
        again = c1t.create_experiment("sdk2-exp", namespace="user1")
        expect(again.experiment_id == e.experiment_id, "not found by name")
        names = [x.display_name for x in (c1.list_experiments(namespace="user1").experiments or [])]
        expect("sdk2-exp" in names, names)

    def upload():
        p = c1.upload_pipeline(PIPELINE, pipeline_name="hello-user1", namespace="user1")
        ids["pipeline"] = p.pipeline_id
        expect(p.namespace == "user1", p)
        versions = c1.list_pipeline_versions(p.pipeline_id).pipeline_versions
        ids["version"] = versions[0].pipeline_version_id
        v = c1.get_pipeline_version(p.pipeline_id, ids["version"])
        expect(v.pipeline_spec["pipelineInfo"]["name"] == "hello-pipeline", v.pipeline_spec)
        shared = c1.upload_pipeline(PIPELINE, pipeline_name="shared-by-sdk2")
        for c in (c1, c2):
            listed = [x.display_name for x in (c.list_pipelines(page_size=100).pipelines or [])]
            expect("shared-by-sdk2" in listed and "shared-by-user1" in listed, f"shared list: {listed}")
        expect(c2.get_pipeline(shared.pipeline_id).display_name == "shared-by-sdk2", "user2 get shared")

    def run():
        r = c1.run_pipeline(ids["exp"], "sdk2-run", pipeline_id=ids["pipeline"], version_id=ids["version"],
                            params={"msg": "hello"})
        ids["run"] = r.run_id
        save(v2_run_id=r.run_id)
        expect(r.state == "PENDING", r.state)
        res = c1.create_run_from_pipeline_package(PIPELINE, arguments={"msg": "x"}, run_name="sdk2-inline",
                                                  experiment_name="sdk2-exp", namespace="user1")
        runs = c1t.list_runs(namespace="user1").runs or []
        got = {x.run_id for x in runs}
        expect(r.run_id in got and res.run_id in got, got)
        runs = c1.list_runs(experiment_id=ids["exp"], page_size=1)
        expect(runs.total_size >= 2 and runs.next_page_token, "paging")
        detail = c1.get_run(r.run_id)
        expect(detail.pipeline_version_reference.pipeline_version_id == ids["version"], detail)

    def other_namespace():
        expect_denied(lambda: c1.list_experiments(namespace="user2"), USER1, "user2", "list", "experiments")
        expect_denied(lambda: c1.create_experiment("intruder", namespace="user2"), USER1, "user2", "list", "experiments")
        expect_denied(lambda: c1.upload_pipeline(PIPELINE, pipeline_name="intruder", namespace="user2"),
                      USER1, "user2", "create", "pipelines", "intruder")
        expect_denied(lambda: c1.list_runs(namespace="user2"), USER1, "user2", "list", "runs")
        expect_denied(lambda: c1.list_pipelines(namespace="user2"), USER1, "user2", "list", "pipelines")
        e2 = c2.create_experiment("sdk2-user2", namespace="user2")
        expect_denied(lambda: c1.run_pipeline(e2.experiment_id, "intruder", pipeline_id=ids["pipeline"],
                                              version_id=ids["version"]), USER1, "user2", "create", "runs")
        expect_denied(lambda: c2.get_run(ids["run"]), USER2, "user1", "get", "runs", "sdk2-run")
        expect_denied(lambda: c2.get_pipeline(ids["pipeline"]), USER2, "user1", "get", "pipelines", "hello-user1")
        expect_denied(lambda: c2.terminate_run(ids["run"]), USER2, "user1", "terminate", "runs", "sdk2-run")
        # user2 cannot run user1's private pipeline from its own namespace either
        expect_denied(lambda: c2.run_pipeline(e2.experiment_id, "borrow", pipeline_id=ids["pipeline"],
                                              version_id=ids["version"]), USER2, "user1", "get", "pipelines", "hello-user1")

    check("kfp 2.14: healthz", healthz)
    check("kfp 2.14: create an experiment in user1, find it by name, list it (cookie and ID token)", experiment)
    check("kfp 2.14: upload a compiled pipeline (namespaced and shared); shared visible to user2", upload)
    check("kfp 2.14: create runs (version and inline package) and list them", run)
    check("kfp 2.14: the same calls on user2's namespace → ApiException 403 with KFP's text", other_namespace)


# ---------------------------------------------------------------------------------------------
# federated users (federated.sh): ID tokens of an LDAP user, an upstream-OIDC user and an Entra user


def federated_checks():
    import kfp

    ldap_user, oidc_user = os.environ["KFP_FED_LDAP_EMAIL"], os.environ["KFP_FED_OIDC_EMAIL"]
    ms_user = os.environ["KFP_FED_MS_EMAIL"]
    ldap = kfp.Client(host=HOST, existing_token=os.environ["KFP_FED_LDAP_TOKEN"], ssl_ca_cert=CA)
    oidc = kfp.Client(host=HOST, existing_token=os.environ["KFP_FED_OIDC_TOKEN"], ssl_ca_cert=CA)
    ms = kfp.Client(host=HOST, existing_token=os.environ["KFP_FED_MS_TOKEN"], ssl_ca_cert=CA)

    def claims(var):
        payload = os.environ[var].split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    def tokens():
        for var, email, groups, sep in (("KFP_FED_LDAP_TOKEN", ldap_user, "KFP_FED_LDAP_GROUPS", None),
                                        ("KFP_FED_OIDC_TOKEN", oidc_user, "KFP_FED_OIDC_GROUPS", None),
                                        ("KFP_FED_MS_TOKEN", ms_user, "KFP_FED_MS_GROUPS", ",")):
            c = claims(var)
            expect(c["email"] == email, c)
            expect(sorted(c.get("groups", [])) == sorted(os.environ[groups].split(sep)), c)

    def own_namespace():
        e1 = ldap.create_experiment("fed-ldap-exp", namespace="fed-ldap")
        expect(e1.namespace == "fed-ldap", e1)
        e2 = oidc.create_experiment("fed-oidc-exp", namespace="fed-oidc")
        expect(e2.namespace == "fed-oidc", e2)
        e3 = ms.create_experiment("fed-ms-exp", namespace="fed-ms")
        expect(e3.namespace == "fed-ms", e3)
        p = ldap.upload_pipeline(PIPELINE, pipeline_name="fed-ldap-pipeline", namespace="fed-ldap")
        expect(p.namespace == "fed-ldap", p)
        for c, ns, want in ((ldap, "fed-ldap", "fed-ldap-exp"), (oidc, "fed-oidc", "fed-oidc-exp"),
                            (ms, "fed-ms", "fed-ms-exp")):
            names = [x.display_name for x in (c.list_experiments(namespace=ns).experiments or [])]
            expect(names == [want], f"{ns}: {names}")
        names = [x.display_name for x in (ldap.list_pipelines(namespace="fed-ldap").pipelines or [])]
        expect(names == ["fed-ldap-pipeline"], names)

    def other_namespace():
        expect_denied(lambda: ldap.list_experiments(namespace="fed-oidc"), ldap_user, "fed-oidc", "list", "experiments")
        expect_denied(lambda: ldap.create_experiment("intruder", namespace="fed-oidc"),
                      ldap_user, "fed-oidc", "list", "experiments")
        expect_denied(lambda: ldap.list_runs(namespace="fed-oidc"), ldap_user, "fed-oidc", "list", "runs")
        expect_denied(lambda: oidc.list_experiments(namespace="fed-ldap"), oidc_user, "fed-ldap", "list", "experiments")
        expect_denied(lambda: oidc.list_pipelines(namespace="fed-ldap"), oidc_user, "fed-ldap", "list", "pipelines")
        expect_denied(lambda: oidc.upload_pipeline(PIPELINE, pipeline_name="intruder", namespace="fed-ldap"),
                      oidc_user, "fed-ldap", "create", "pipelines", "intruder")
        expect_denied(lambda: ms.list_experiments(namespace="fed-ldap"), ms_user, "fed-ldap", "list", "experiments")
        expect_denied(lambda: ldap.list_experiments(namespace="fed-ms"), ldap_user, "fed-ms", "list", "experiments")

    check("federated: the ID tokens carry the upstream's email and groups (ldap password grant, upstream oidc "
          "login, microsoft login)", tokens)
    check("federated: kfp 2.14 with each user's ID token works in their own namespace and lists only its objects",
          own_namespace)
    check("federated: each user is refused the others' namespaces (ApiException 403 with KFP's text)", other_namespace)


def main():
    mode = sys.argv[1]
    if mode == "http":
        http_checks()
    elif mode == "report":
        report_checks()
    elif mode == "v1":
        v1_checks()
    elif mode == "v2":
        v2_checks()
    elif mode == "federated":
        federated_checks()
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"RESULT passed={PASSED} failed={FAILED}", flush=True)


if __name__ == "__main__":
    main()
