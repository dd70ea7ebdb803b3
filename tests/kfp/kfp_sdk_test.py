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
ADMIN = "kfp-pipelines-admin@example.org"


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


def expect_status(fn, status, code=None):
    """Runs fn; it must raise the SDK's ApiException with `status` and KFP's error JSON."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        got = getattr(e, "status", None)
        body = getattr(e, "body", "") or ""
        expect(got == status, f"expected {status}, got {got} ({type(e).__name__}): {body[:300] or e}")
        v = json.loads(body)
        expect(set(v) == {"error", "code", "message", "details"}, f"not KFP's error JSON: {body[:300]}")
        if code is not None:
            expect(v["code"] == code, f"expected code {code}: {body[:300]}")
        return
    raise AssertionError(f"the call did not fail with {status}")


def agent_report(run_id, phase, name):
    """The persistence agent reports the Argo workflow of `run_id` in `phase` (as report mode does)."""
    s = requests.Session()
    s.verify = CA
    s.trust_env = False
    wf = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": "user1", "uid": name + "-uid", "labels": {"pipeline/runid": run_id}},
        "status": {"phase": phase, "startedAt": "2024-01-01T00:00:00Z",
                   **({"finishedAt": "2024-01-01T00:01:00Z"} if phase in ("Succeeded", "Failed") else {})},
    }
    r = s.post(HOST + "/apis/v1beta1/workflows", headers={"Authorization": "Bearer " + os.environ["KFP_AGENT_TOKEN"]},
               json=wf)
    expect(r.status_code == 200, f"report {phase}: {r.status_code} {r.text[:300]}")


def v1_checks():
    """The kfp 1.8.22 SDK's common surface, as a user calls it (kfp.Client methods; where 1.8.22's
    Client has no method — unarchive_experiment, enable_job, get_pipeline_version — the
    generated kfp_server_api call it wraps, which users reach as client._experiment_api etc.)."""
    import kfp

    expect(kfp.__version__ == "1.8.22", kfp.__version__)
    c1 = kfp.Client(host=HOST, cookies=cookie("USER1"), ssl_ca_cert=CA)
    c1t = kfp.Client(host=HOST, existing_token=os.environ["KFP_USER1_TOKEN"], ssl_ca_cert=CA)
    c2 = kfp.Client(host=HOST, existing_token=os.environ["KFP_USER2_TOKEN"], ssl_ca_cert=CA)
    ids = {}

    def need(*keys):
        missing = [k for k in keys if k not in ids]
        expect(not missing, f"an earlier check failed to create {missing}")

    def healthz():
        h = c1.get_kfp_healthz()
        expect(h.multi_user is True, h)

    def experiment():
        e = c1.create_experiment("sdk18-exp", description="kfp 1.8 experiment", namespace="user1")
        ids["exp"] = e.id
        expect(e.description == "kfp 1.8 experiment", e)
        expect(e.storage_state == "STORAGESTATE_AVAILABLE", e.storage_state)
        again = c1.create_experiment("sdk18-exp", namespace="user1")
        expect(again.id == e.id, "create_experiment did not find the existing experiment by name")
        names = [x.name for x in (c1t.list_experiments(namespace="user1", page_size=100).experiments or [])]
        expect("sdk18-exp" in names, names)
        got = c1.get_experiment(experiment_id=e.id)
        expect(got.resource_references[0].key.id == "user1", got)
        expect(got.resource_references[0].key.type == "NAMESPACE", got)
        expect(c1.get_experiment(experiment_name="sdk18-exp", namespace="user1").id == e.id, "by name")
        try:
            c1.get_experiment(experiment_name="no-such-exp", namespace="user1")
            raise AssertionError("found a missing experiment")
        except ValueError as err:
            expect("No experiment is found" in str(err), err)
        expect_status(lambda: c1.get_experiment(experiment_id="no-such-id"), 404, 5)

    def archive():
        e = c1.create_experiment("sdk18-archive", namespace="user1")
        ids["archive_exp"] = e.id
        c1.archive_experiment(e.id)
        expect(c1.get_experiment(experiment_id=e.id).storage_state == "STORAGESTATE_ARCHIVED", "archived")
        f = json.dumps({"predicates": [{"op": 1, "key": "storage_state", "stringValue": "STORAGESTATE_ARCHIVED"}]})
        names = [x.name for x in (c1.list_experiments(namespace="user1", filter=f).experiments or [])]
        expect(names == ["sdk18-archive"], f"filter on storage_state: {names}")
        c1._experiment_api.unarchive_experiment(id=e.id)
        expect(c1.get_experiment(experiment_id=e.id).storage_state == "STORAGESTATE_AVAILABLE", "unarchived")

    def upload():
        p = c1.upload_pipeline(PIPELINE, pipeline_name="shared-by-user1", description="uploaded by 1.8")
        ids["pipeline"] = p.id
        expect(p.default_version is not None and p.default_version.id, p)
        ids["v1"] = p.default_version.id
        expect(p.description == "uploaded by 1.8", p)
        expect(not p.resource_references, f"a 1.8 upload is shared (no namespace): {p.resource_references}")
        listed = [x.name for x in (c2.list_pipelines(page_size=100).pipelines or [])]
        expect("shared-by-user1" in listed, f"user2 does not see the shared pipeline: {listed}")
        expect(c1.get_pipeline_id("shared-by-user1") == p.id, "get_pipeline_id")
        expect(c1.get_pipeline_id("no-such-pipeline") is None, "get_pipeline_id of a missing name")
        got = c2.get_pipeline(p.id)
        expect(got.name == "shared-by-user1" and got.default_version.id == ids["v1"], got)
        expect([x.name for x in (got.parameters or [])] == [x.name for x in (p.parameters or [])], got.parameters)
        expect_status(lambda: c1.upload_pipeline(PIPELINE, pipeline_name="shared-by-user1"), 409, 6)
        expect_status(lambda: c1.get_pipeline("no-such-id"), 404, 5)
        f = json.dumps({"predicates": [{"op": 1, "key": "name", "stringValue": "shared-by-user1"}]})
        expect([x.id for x in c1.list_pipelines(filter=f).pipelines] == [p.id], "list_pipelines filter")

    def versions_by_owner():
        need("pipeline")
        pid = ids["pipeline"]
        v2 = c1.upload_pipeline_version(PIPELINE, "sdk18-v2", pipeline_id=pid, description="second")
        ids["v2"] = v2.id
        expect(v2.name == "sdk18-v2" and v2.description == "second", v2)
        ref = v2.resource_references[0]
        expect(ref.key.type == "PIPELINE" and ref.key.id == pid and ref.relationship == "OWNER", ref)
        v3 = c1t.upload_pipeline_version(PIPELINE, "sdk18-v3", pipeline_name="shared-by-user1")
        ids["v3"] = v3.id
        got = c1.list_pipeline_versions(pid, page_size=100)
        names = sorted(x.name for x in (got.versions or []))
        expect(names == sorted(["shared-by-user1", "sdk18-v2", "sdk18-v3"]), names)
        expect(got.total_size == 3, got.total_size)
        page = c2.list_pipeline_versions(pid, page_size=2, sort_by="created_at")
        expect(len(page.versions) == 2 and page.next_page_token, "paging")
        rest = c2._pipelines_api.list_pipeline_versions(resource_key_type="PIPELINE", resource_key_id=pid,
                                                          page_token=page.next_page_token, page_size=2)
        expect([x.id for x in rest.versions] == [v3.id] and not rest.next_page_token, rest)
        # The newest version is the default one (what run_pipeline(pipeline_id=…) runs).
        expect(c1.get_pipeline(pid).default_version.id == v3.id, "default version")
        one = c1._pipelines_api.get_pipeline_version(version_id=v2.id)
        expect(one.name == "sdk18-v2", one)
        expect_status(lambda: c1.upload_pipeline_version(PIPELINE, "sdk18-v2", pipeline_id=pid), 409, 6)
        expect_status(lambda: c1.upload_pipeline_version(PIPELINE, "x", pipeline_id="no-such-id"), 404, 5)

    def versions_by_others():
        need("pipeline", "v2")
        pid = ids["pipeline"]
        for call in (lambda: c2.upload_pipeline_version(PIPELINE, "intruder", pipeline_id=pid),
                     lambda: c2.upload_pipeline_version(PIPELINE, "intruder", pipeline_name="shared-by-user1")):
            expect_denied(call, USER2, "kubeflow", "create", "pipelines", "shared-by-user1")
        expect_denied(lambda: c2.delete_pipeline_version(ids["v2"]), USER2, "kubeflow", "delete", "pipelines",
                      "shared-by-user1")
        expect_denied(lambda: c2.delete_pipeline(pid), USER2, "kubeflow", "delete", "pipelines", "shared-by-user1")
        expect(c1.list_pipeline_versions(pid).total_size == 3, "a refused call changed the versions")

    def versions_by_admin():
        # A KFP admin (pipelines in the system namespace, kubeflow) may change any shared pipeline.
        need("pipeline")
        admin = kfp.Client(host=HOST, existing_token=os.environ["KFP_ADMIN_TOKEN"], ssl_ca_cert=CA)
        v = admin.upload_pipeline_version(PIPELINE, "by-the-admin", pipeline_id=ids["pipeline"])
        expect(c1.get_pipeline(ids["pipeline"]).default_version.id == v.id, "the admin's version is the default")
        admin.delete_pipeline_version(v.id)
        expect(c1.list_pipeline_versions(ids["pipeline"]).total_size == 3, "the admin's version is still there")
        # ...but has no right in user1's namespace.
        expect_denied(lambda: admin.list_runs(namespace="user1"), ADMIN, "user1", "list", "runs")

    def run():
        need("exp", "pipeline", "v2", "v3")
        r = c1.run_pipeline(ids["exp"], "sdk18-run", pipeline_id=ids["pipeline"], version_id=ids["v2"],
                            params={"msg": "from 1.8"})
        ids["run"] = r.id
        expect(r.status == "Pending", r.status)
        refs = {(x.key.type, x.key.id) for x in r.resource_references}
        expect(("EXPERIMENT", ids["exp"]) in refs and ("NAMESPACE", "user1") in refs, refs)
        expect(("PIPELINE_VERSION", ids["v2"]) in refs, refs)
        expect({p.name: p.value for p in r.pipeline_spec.parameters or []}.get("msg") == "from 1.8",
               r.pipeline_spec.parameters)
        # Only a pipeline id: its default (newest) version.
        d = c1.run_pipeline(ids["exp"], "sdk18-default", pipeline_id=ids["pipeline"])
        refs = {(x.key.type, x.key.id) for x in c1.get_run(d.id).run.resource_references}
        expect(("PIPELINE_VERSION", ids["v3"]) in refs, refs)
        runs = c1t.list_runs(namespace="user1", page_size=100).runs or []
        expect({r.id, d.id} <= {x.id for x in runs}, [x.id for x in runs])
        runs = c1.list_runs(experiment_id=ids["exp"], sort_by="created_at desc", page_size=1)
        expect(len(runs.runs) == 1 and runs.next_page_token and runs.total_size == 2, runs)
        expect(runs.runs[0].id == d.id, "sorted newest first")
        detail = c1.get_run(r.id)
        expect(detail.run.status == "Pending", detail.run.status)
        expect("pipelineInfo" in (detail.run.pipeline_spec.pipeline_manifest or ""), "manifest missing")
        # AVAILABLE is v1 Run.StorageState's zero value, which KFP's JSON omits.
        expect(detail.run.storage_state in (None, "STORAGESTATE_AVAILABLE"), detail.run.storage_state)
        expect_status(lambda: c1.get_run("no-such-run"), 404, 5)

    def run_from_package():
        res = c1.create_run_from_pipeline_package(PIPELINE, arguments={"msg": "inline"}, run_name="sdk18-inline",
                                                  experiment_name="sdk18-exp", namespace="user1")
        ids["inline_run"] = res.run_id
        run = c1.get_run(res.run_id).run
        expect(run.name == "sdk18-inline", run.name)
        refs = {(x.key.type, x.key.id) for x in run.resource_references}
        expect(("EXPERIMENT", ids.get("exp")) in refs, refs)
        manifest = run.pipeline_spec.workflow_manifest or run.pipeline_spec.pipeline_manifest or ""
        expect("pipelineInfo" in manifest, "the package is not in the run")
        ids["inline_result"] = res

    def wait_for_completion():
        need("inline_result", "run")
        res = ids["inline_result"]
        agent_report(res.run_id, "Running", "sdk18-inline-wf")
        expect(c1.get_run(res.run_id).run.status == "Running", "running")
        agent_report(res.run_id, "Succeeded", "sdk18-inline-wf")
        done = res.wait_for_run_completion(timeout=60)
        expect(done.run.status == "Succeeded", done.run.status)
        expect(done.run.finished_at is not None and done.run.finished_at.year == 2024, done.run.finished_at)
        agent_report(ids["run"], "Failed", "sdk18-run-wf")
        expect(c1.wait_for_run_completion(ids["run"], 60).run.status == "Failed", "failed")

    def recurring():
        need("exp", "pipeline", "v2")
        j = c1.create_recurring_run(ids["exp"], "sdk18-cron", description="weekdays", cron_expression="0 0 9 ? * 2-6",
                                    pipeline_id=ids["pipeline"], version_id=ids["v2"], params={"msg": "cron"},
                                    max_concurrency=2, no_catchup=True)
        ids["job"] = j.id
        expect(j.enabled is True and j.mode == "ENABLED", (j.enabled, j.mode))
        expect(j.trigger.cron_schedule.cron == "0 0 9 ? * 2-6", j.trigger)
        expect(int(j.max_concurrency) == 2 and j.no_catchup is True, j)
        refs = {(x.key.type, x.key.id) for x in j.resource_references}
        expect(("EXPERIMENT", ids["exp"]) in refs and ("PIPELINE_VERSION", ids["v2"]) in refs, refs)
        p = c1.create_recurring_run(ids["exp"], "sdk18-periodic", interval_second=3600,
                                    start_time="2030-01-01T00:00:00Z", pipeline_id=ids["pipeline"], enabled=False)
        ids["job2"] = p.id
        expect(int(p.trigger.periodic_schedule.interval_second) == 3600, p.trigger)
        expect(p.trigger.periodic_schedule.start_time.year == 2030, p.trigger)
        # KFP's JSON omits unpopulated fields, so a disabled job's `enabled` arrives as None.
        expect(not p.enabled and p.mode == "DISABLED", (p.enabled, p.mode))
        listed = {x.name for x in (c1.list_recurring_runs(experiment_id=ids["exp"], page_size=100).jobs or [])}
        expect(listed == {"sdk18-cron", "sdk18-periodic"}, listed)
        got = c1.get_recurring_run(j.id)
        expect(got.name == "sdk18-cron" and got.description == "weekdays", got)
        c1.disable_job(j.id)
        got = c1.get_recurring_run(j.id)
        expect(not got.enabled and got.mode == "DISABLED", (got.enabled, got.mode))
        c1._job_api.enable_job(id=j.id)
        expect(c1.get_recurring_run(j.id).enabled is True, "enable_job")
        c1.delete_job(p.id)
        expect_status(lambda: c1.get_recurring_run(p.id), 404, 5)
        expect_status(lambda: c1.create_recurring_run(ids["exp"], "bad-cron", cron_expression="not a cron",
                                                      pipeline_id=ids["pipeline"]), 400, 3)

    def legacy_pipelines():
        # What kfp 1.8 users mostly have: pipelines compiled by the 1.8 compiler (Argo Workflows),
        # as .yaml, .tar.gz and .zip, with parameters.
        import tempfile

        from kfp import compiler, dsl

        @dsl.pipeline(name="legacy-echo", description="a kfp 1.8 (Argo) pipeline")
        def legacy(msg: str = "hi", times: int = 2):
            dsl.ContainerOp(name="echo", image="alpine", command=["echo", msg, times])

        need("exp")
        d = tempfile.mkdtemp()
        paths = {}
        for ext in ("yaml", "tar.gz", "zip"):
            paths[ext] = os.path.join(d, "legacy." + ext)
            compiler.Compiler().compile(legacy, paths[ext])
        p = c1.upload_pipeline(paths["tar.gz"], pipeline_name="sdk18-legacy")
        ids["legacy"] = p.id
        expect({x.name: x.value for x in p.parameters or []} == {"msg": "hi", "times": "2"}, p.parameters)
        v = c1.upload_pipeline_version(paths["zip"], "sdk18-legacy-zip", pipeline_id=p.id)
        expect({x.name: x.value for x in v.parameters or []} == {"msg": "hi", "times": "2"}, v.parameters)
        tmpl = c1._pipelines_api.get_template(id=p.id).template
        expect("legacy-echo" in tmpl and "argoproj.io" in tmpl, tmpl[:200])
        r = c1.run_pipeline(ids["exp"], "sdk18-legacy-run", pipeline_id=p.id, params={"msg": "override"})
        got = {x.name: x.value for x in c1.get_run(r.id).run.pipeline_spec.parameters or []}
        expect(got.get("msg") == "override", got)
        r = c1.run_pipeline(ids["exp"], "sdk18-legacy-pkg", pipeline_package_path=paths["yaml"], params={"times": 5})
        run = c1.get_run(r.id).run
        expect("legacy-echo" in (run.pipeline_spec.workflow_manifest or ""), "the workflow is not in the run")
        expect({x.name: x.value for x in run.pipeline_spec.parameters or []}.get("times") == "5", run.pipeline_spec)
        res = c1.create_run_from_pipeline_func(legacy, arguments={"msg": "from a function"},
                                               experiment_name="sdk18-exp", namespace="user1")
        run = c1.get_run(res.run_id).run
        expect(run.name.startswith("legacy"), run.name)
        expect(("EXPERIMENT", ids["exp"]) in {(x.key.type, x.key.id) for x in run.resource_references}, run)
        # The persistence agent's report is what get_run's pipeline_runtime shows afterwards.
        agent_report(res.run_id, "Succeeded", "legacy-echo-abcde")
        wf = c1._get_workflow_json(res.run_id)
        expect(wf["status"]["phase"] == "Succeeded" and wf["metadata"]["name"] == "legacy-echo-abcde", wf)

    def defaults_and_listing():
        # The namespace kept in the SDK's context file, then lists without a namespace: KFP's
        # multi-user answer (InvalidArgument) for runs and recurring runs.
        need("exp")
        c1.set_user_namespace("user1")
        try:
            ctx = kfp.Client(host=HOST, cookies=cookie("USER1"), ssl_ca_cert=CA)
            expect(ctx.get_user_namespace() == "user1", ctx.get_user_namespace())
            names = [x.name for x in (ctx.list_experiments(page_size=100).experiments or [])]
            expect("sdk18-exp" in names, names)
            expect(ctx.get_experiment(experiment_name="sdk18-exp").id == ids["exp"], "by name in the default ns")
            expect(any(x.id for x in (ctx.list_runs(page_size=5).runs or [])), "runs in the default namespace")
        finally:
            c1.set_user_namespace("")
        bare = kfp.Client(host=HOST, cookies=cookie("USER1"), ssl_ca_cert=CA)
        expect_status(lambda: bare.list_runs(), 400, 3)
        try:
            bare.list_runs()
        except Exception as e:  # noqa: BLE001
            expect("A run cannot have an empty namespace in multi-user mode" in e.body, e.body)
        try:
            bare.list_recurring_runs()
            raise AssertionError("listed recurring runs without a namespace")
        except Exception as e:  # noqa: BLE001
            expect(getattr(e, "status", None) == 400, e)
            expect("a recurring run cannot have an empty namespace in multi-user mode" in e.body, e.body)
        # Paging and sorting as the SDK sends them.
        names = [x.name for x in (c1.list_pipelines(sort_by="name desc", page_size=100).pipelines or [])]
        expect(names == sorted(names, reverse=True) and len(names) >= 2, names)
        first = c1.list_experiments(namespace="user1", page_size=1, sort_by="created_at")
        expect(len(first.experiments) == 1 and first.next_page_token and first.total_size >= 2, first)
        nxt = c1.list_experiments(namespace="user1", page_size=1, sort_by="created_at", page_token=first.next_page_token)
        expect(nxt.experiments[0].id != first.experiments[0].id, "the second page repeats the first")

    def archive_with_children():
        # Archiving an experiment archives its runs and disables its recurring runs (KFP's
        # ArchiveExperiment); unarchiving brings back the experiment.
        need("archive_exp")
        e = ids["archive_exp"]
        r = c1.run_pipeline(e, "sdk18-archived-run", pipeline_package_path=PIPELINE)
        j = c1.create_recurring_run(e, "sdk18-archived-job", interval_second=600, pipeline_package_path=PIPELINE)
        expect(j.enabled is True, j.enabled)
        c1.archive_experiment(e)
        expect(c1.get_run(r.id).run.storage_state == "STORAGESTATE_ARCHIVED", "run not archived")
        expect(not c1.get_recurring_run(j.id).enabled, "job not disabled")
        c1._experiment_api.unarchive_experiment(id=e)
        expect(c1.get_experiment(experiment_id=e).storage_state == "STORAGESTATE_AVAILABLE", "unarchived")
        c1.delete_job(j.id)

    def other_namespace():
        need("exp", "pipeline", "run", "job")
        expect_denied(lambda: c1.list_experiments(namespace="user2"), USER1, "user2", "list", "experiments")
        expect_denied(lambda: c1.create_experiment("intruder", namespace="user2"), USER1, "user2", "list", "experiments")
        expect_denied(lambda: c1.list_runs(namespace="user2"), USER1, "user2", "list", "runs")
        e2 = c2.create_experiment("sdk18-user2", namespace="user2")
        expect_denied(lambda: c1.get_experiment(experiment_id=e2.id), USER1, "user2", "get", "experiments", "sdk18-user2")
        expect_denied(lambda: c1.run_pipeline(e2.id, "intruder-run", pipeline_id=ids["pipeline"]), USER1, "user2", "create", "runs")
        expect_denied(lambda: c1.create_run_from_pipeline_package(PIPELINE, {}, run_name="intruder",
                                                                  experiment_name="sdk18-user2", namespace="user2"),
                      USER1, "user2", "list", "experiments")
        expect_denied(lambda: c1.create_recurring_run(e2.id, "intruder-job", interval_second=60, pipeline_id=ids["pipeline"]),
                      USER1, "user2", "create", "jobs", "intruder-job")
        expect_denied(lambda: c2.get_run(ids["run"]), USER2, "user1", "get", "runs", "sdk18-run")
        expect_denied(lambda: c2.wait_for_run_completion(ids["run"], 5), USER2, "user1", "get", "runs", "sdk18-run")
        expect_denied(lambda: c2.list_runs(experiment_id=ids["exp"]), USER2, "user1", "list", "runs")
        expect_denied(lambda: c2.delete_experiment(ids["exp"]), USER2, "user1", "delete", "experiments", "sdk18-exp")
        expect_denied(lambda: c2.archive_experiment(ids["exp"]), USER2, "user1", "archive", "experiments", "sdk18-exp")
        expect_denied(lambda: c2.get_recurring_run(ids["job"]), USER2, "user1", "get", "jobs", "sdk18-cron")
        expect_denied(lambda: c2.list_recurring_runs(experiment_id=ids["exp"]), USER2, "user1", "list", "jobs")
        expect_denied(lambda: c2.disable_job(ids["job"]), USER2, "user1", "disable", "jobs", "sdk18-cron")
        expect_denied(lambda: c2.delete_job(ids["job"]), USER2, "user1", "delete", "jobs", "sdk18-cron")
        expect(c1.get_recurring_run(ids["job"]).enabled is True, "a refused call changed the job")

    def deletes():
        need("exp", "pipeline", "v2", "v3", "job", "archive_exp")
        pid = ids["pipeline"]
        c1.delete_job(ids["job"])
        expect_status(lambda: c1.get_recurring_run(ids["job"]), 404, 5)
        # The owner deletes a version of its shared pipeline (the pipeline stays for kfp 2.14's
        # checks): the default falls back to the newest remaining one.
        c1.delete_pipeline_version(ids["v3"])
        left = sorted(x.id for x in (c1.list_pipeline_versions(pid).versions or []))
        expect(left == sorted([ids["v1"], ids["v2"]]), left)
        expect(c1.get_pipeline(pid).default_version.id == ids["v2"], "default after delete")
        # ...and a whole pipeline with its versions.
        p = c1.upload_pipeline(PIPELINE, pipeline_name="sdk18-to-delete")
        v = c1.upload_pipeline_version(PIPELINE, "sdk18-to-delete-v2", pipeline_id=p.id)
        c1.delete_pipeline(p.id)
        expect_status(lambda: c1.get_pipeline(p.id), 404, 5)
        expect_status(lambda: c1._pipelines_api.get_pipeline_version(version_id=v.id), 404, 5)
        expect(c1.get_pipeline_id("sdk18-to-delete") is None, "still found by name")
        c1.delete_experiment(ids["archive_exp"])
        expect_status(lambda: c1.get_experiment(experiment_id=ids["archive_exp"]), 404, 5)

    check("kfp 1.8: healthz says multi_user", healthz)
    check("kfp 1.8: create an experiment in user1, find it by id and name, list it (cookie and ID token)", experiment)
    check("kfp 1.8: archive an experiment, filter on it, unarchive it", archive)
    check("kfp 1.8: upload a kfp-2-compiled pipeline (shared) — visible to user2, get_pipeline(_id), 409 on a "
          "duplicate name", upload)
    check("kfp 1.8: upload_pipeline_version by the pipeline's owner (by id and by name), list / page / get versions",
          versions_by_owner)
    check("kfp 1.8: another user's upload_pipeline_version / delete on that shared pipeline → 403 with KFP's text",
          versions_by_others)
    check("kfp 1.8: a KFP admin (pipelines in kubeflow) adds and deletes a version of user1's shared pipeline",
          versions_by_admin)
    check("kfp 1.8: run_pipeline with a pipeline id and a version id, list (namespace, experiment, paged, sorted), "
          "get_run", run)
    check("kfp 1.8: create_run_from_pipeline_package", run_from_package)
    check("kfp 1.8: wait_for_run_completion sees the persistence agent's Succeeded / Failed", wait_for_completion)
    check("kfp 1.8: recurring runs — create (cron, periodic), list, get, disable, enable, delete_job", recurring)
    check("kfp 1.8: pipelines compiled by the 1.8 compiler (Argo; .tar.gz, .zip, .yaml) — parameters, templates, "
          "runs with params, create_run_from_pipeline_func, the reported workflow in pipeline_runtime", legacy_pipelines)
    check("kfp 1.8: set_user_namespace as the default; lists without a namespace → 400 with KFP's text; paging and "
          "sorting", defaults_and_listing)
    check("kfp 1.8: archive_experiment archives its runs and disables its recurring runs; unarchive",
          archive_with_children)
    check("kfp 1.8: the same calls on the other user's namespace and objects → ApiException 403 with KFP's text",
          other_namespace)
    check("kfp 1.8: delete_job, delete_pipeline_version, delete_pipeline, delete_experiment", deletes)


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
        # The creator of a shared pipeline adds versions; another user is refused (KFP's check in
        # the system namespace).
        v = c1t.upload_pipeline_version(PIPELINE, "sdk2-shared-v2", pipeline_id=shared.pipeline_id)
        expect(v.pipeline_id == shared.pipeline_id, v)
        expect_denied(lambda: c2.upload_pipeline_version(PIPELINE, "intruder", pipeline_id=shared.pipeline_id),
                      USER2, "kubeflow", "create", "pipelines", "shared-by-sdk2")
        names = [x.display_name for x in c2.list_pipeline_versions(shared.pipeline_id).pipeline_versions]
        expect(sorted(names) == ["sdk2-shared-v2", "shared-by-sdk2"], names)

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
    check("kfp 2.14: upload a compiled pipeline (namespaced and shared); shared visible to user2; its creator adds "
          "a version, user2 is refused", upload)
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
