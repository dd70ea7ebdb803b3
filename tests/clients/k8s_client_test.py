"""The official Python `kubernetes` client (PyPI `kubernetes`) against a running kfsec, used as
users use it: load_kube_config on the admin kubeconfig, VersionApi, CoreV1Api CRUD, a watch
receiving ADDED/MODIFIED/DELETED for changes made meanwhile, CustomObjectsApi on Kubeflow
Profiles, TokenRequest, SelfSubjectReview, and a user's bearer token refused with the 403
Status body. Prints one line per check and `RESULT passed=N failed=M`.

Environment (set by run.sh): K8S_KUBECONFIG (admin), K8S_BASE, K8S_CA, K8S_USER_TOKEN,
K8S_USER (the user's name).
"""

import json
import os
import threading
import time
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "clients"
RESULTS = {"passed": 0, "failed": 0}


def check(name):
    def wrap(fn):
        try:
            fn()
            RESULTS["passed"] += 1
            print(f"  PASS {name}", flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported, the run goes on
            RESULTS["failed"] += 1
            print(f"  FAIL {name}\n{traceback.format_exc()}", flush=True)
        return fn

    return wrap


def bearer_client(token):
    """An ApiClient for kfsec's front door with a bearer token (no kubeconfig)."""
    c = client.Configuration()
    c.host = os.environ["K8S_BASE"]
    c.ssl_ca_cert = os.environ["K8S_CA"]
    c.api_key = {"authorization": token}
    c.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(c)


def status_of(e):
    """The Kubernetes Status in an ApiException's body."""
    return json.loads(e.body)


config.load_kube_config(config_file=os.environ["K8S_KUBECONFIG"])
core = client.CoreV1Api()


@check("VersionApi().get_code() (GET /version/)")
def _():
    v = client.VersionApi().get_code()
    assert v.git_version.startswith("v1.32"), v
    assert (v.major, v.minor) == ("1", "32"), v


@check("create namespace, configmap CRUD (create, list by label, patch, replace, delete)")
def _():
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c1", labels={"app": "web"}), data={"a": "1"})
    created = core.create_namespaced_config_map(NS, cm)
    assert created.metadata.resource_version and created.metadata.uid, created.metadata
    listed = core.list_namespaced_config_map(NS, label_selector="app=web")
    assert [i.metadata.name for i in listed.items] == ["c1"], listed.items
    assert core.list_namespaced_config_map(NS, label_selector="app=db").items == []
    patched = core.patch_namespaced_config_map("c1", NS, {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}, patched.data
    patched = core.patch_namespaced_config_map("c1", NS, [{"op": "remove", "path": "/data/a"}])
    assert patched.data == {"b": "2"}, patched.data
    patched.data = {"c": "3"}
    replaced = core.replace_namespaced_config_map("c1", NS, patched)
    assert replaced.data == {"c": "3"}
    core.delete_namespaced_config_map("c1", NS)
    try:
        core.read_namespaced_config_map("c1", NS)
        raise AssertionError("read after delete succeeded")
    except ApiException as e:
        assert e.status == 404, e
        s = status_of(e)
        assert (s["kind"], s["reason"], s["message"]) == ("Status", "NotFound", 'configmaps "c1" not found'), s


@check("watch.Watch().stream(list_namespaced_config_map) sees ADDED, MODIFIED, DELETED")
def _():
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="before")))
    seen = []
    w = watch.Watch()

    def changes():
        time.sleep(0.5)
        core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w1"), data={"v": "1"}))
        core.patch_namespaced_config_map("w1", NS, {"data": {"v": "2"}})
        core.delete_namespaced_config_map("w1", NS)

    t = threading.Thread(target=changes)
    t.start()
    deadline = time.time() + 15
    for event in w.stream(core.list_namespaced_config_map, NS, timeout_seconds=10):
        obj = event["object"]
        seen.append((event["type"], obj.metadata.name, (obj.data or {}).get("v")))
        if event["type"] == "DELETED" and obj.metadata.name == "w1":
            w.stop()
        if time.time() > deadline:
            w.stop()
    t.join()
    assert ("ADDED", "before", None) in seen, seen
    w1 = [e for e in seen if e[1] == "w1"]
    assert w1 == [("ADDED", "w1", "1"), ("MODIFIED", "w1", "2"), ("DELETED", "w1", "2")], seen
    # A watch from a resourceVersion (what Watch does after a list) replays nothing older.
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    events = list(watch.Watch().stream(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=1))
    assert events == [], events


@check("CustomObjectsApi on profiles.kubeflow.org (create, get, list, patch, delete)")
def _():
    co = client.CustomObjectsApi()
    body = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Profile",
        "metadata": {"name": "clients-team"},
        "spec": {"owner": {"kind": "User", "name": os.environ["K8S_USER"]}},
    }
    co.create_cluster_custom_object("kubeflow.org", "v1", "profiles", body)
    got = co.get_cluster_custom_object("kubeflow.org", "v1", "profiles", "clients-team")
    assert got["spec"]["owner"]["name"] == os.environ["K8S_USER"], got
    names = [p["metadata"]["name"] for p in co.list_cluster_custom_object("kubeflow.org", "v1", "profiles")["items"]]
    assert "clients-team" in names, names
    patched = co.patch_cluster_custom_object(
        "kubeflow.org", "v1", "profiles", "clients-team", {"metadata": {"labels": {"team": "clients"}}}
    )
    assert patched["metadata"]["labels"]["team"] == "clients", patched
    # The profile controller makes the namespace.
    for _ in range(100):
        try:
            ns = core.read_namespace("clients-team")
            break
        except ApiException as e:
            assert e.status == 404, e
            time.sleep(0.1)
    else:
        raise AssertionError("the profile's namespace never appeared")
    assert ns.metadata.annotations["owner"] == os.environ["K8S_USER"], ns.metadata
    co.delete_cluster_custom_object("kubeflow.org", "v1", "profiles", "clients-team")
    try:
        co.get_cluster_custom_object("kubeflow.org", "v1", "profiles", "nope")
        raise AssertionError("a missing profile was found")
    except ApiException as e:
        assert (e.status, status_of(e)["reason"]) == (404, "NotFound"), e


@check("create_namespaced_service_account_token (TokenRequest) and the token at work")
def _():
    core.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="robot")))
    spec = client.V1TokenRequestSpec(audiences=["kfsec"], expiration_seconds=600)
    tr = core.create_namespaced_service_account_token("robot", NS, client.AuthenticationV1TokenRequest(spec=spec))
    assert tr.status.token.count(".") == 2, "not a JWT"
    assert tr.spec.expiration_seconds == 600 and tr.spec.audiences == ["kfsec"], tr.spec
    left = tr.status.expiration_timestamp.timestamp() - time.time()
    assert 500 < left <= 601, left
    sa = bearer_client(tr.status.token)
    who = client.AuthenticationV1Api(sa).create_self_subject_review(client.V1SelfSubjectReview())
    assert who.status.user_info.username == f"system:serviceaccount:{NS}:robot", who.status
    assert f"system:serviceaccounts:{NS}" in who.status.user_info.groups, who.status
    try:
        client.CoreV1Api(sa).list_namespaced_secret(NS)
        raise AssertionError("an unbound service account listed secrets")
    except ApiException as e:
        assert e.status == 403, e
    # Too short, and a missing account: kube-apiserver's answers.
    try:
        core.create_namespaced_service_account_token(
            "robot", NS, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=60))
        )
        raise AssertionError("a 60 s token was issued")
    except ApiException as e:
        s = status_of(e)
        assert (e.status, s["reason"]) == (422, "Invalid"), s
        assert "may not specify a duration less than 10 minutes" in s["message"], s
    try:
        core.create_namespaced_service_account_token(
            "ghost", NS, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        )
        raise AssertionError("a token for a missing account was issued")
    except ApiException as e:
        assert (e.status, status_of(e)["message"]) == (404, 'serviceaccounts "ghost" not found'), e


@check("AuthenticationV1Api().create_self_subject_review (admin, client certificate)")
def _():
    r = client.AuthenticationV1Api().create_self_subject_review(client.V1SelfSubjectReview())
    assert r.status.user_info.username == "kfsec-admin", r.status
    assert "system:masters" in r.status.user_info.groups, r.status


@check("a user's bearer token: its own identity, and 403 with the Status body")
def _():
    user = bearer_client(os.environ["K8S_USER_TOKEN"])
    who = client.AuthenticationV1Api(user).create_self_subject_review(client.V1SelfSubjectReview())
    assert who.status.user_info.username == os.environ["K8S_USER"], who.status
    try:
        client.CoreV1Api(user).list_namespace()
        raise AssertionError("a plain user listed namespaces")
    except ApiException as e:
        s = status_of(e)
        assert e.status == 403, e
        want = f'namespaces is forbidden: User "{os.environ["K8S_USER"]}" cannot list resource "namespaces" in API group "" at the cluster scope'
        assert (s["kind"], s["reason"], s["message"], s["code"]) == ("Status", "Forbidden", want, 403), s
    try:
        client.CoreV1Api(user).create_namespaced_service_account_token(
            "robot", NS, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        )
        raise AssertionError("a plain user minted a token")
    except ApiException as e:
        assert e.status == 403, e
        assert 'cannot create resource "serviceaccounts/token"' in status_of(e)["message"], e.body


core.delete_namespace(NS)
print(f"RESULT passed={RESULTS['passed']} failed={RESULTS['failed']}", flush=True)
