#!/usr/bin/env python3
"""Regenerates kfsec's embedded OpenAPI data (crates/api/openapi/*.json).

Two inputs, both public packages/repositories, read from local paths (nothing is downloaded here):

  --k8s-defs FILE   `_definitions.json` of Kubernetes v1.32 as shipped by the PyPI package
                    kubernetes-validate (1.37.0), directory
                    kubernetes_validate/kubernetes-json-schema/v1.32.0-local/. That file is the
                    upstream swagger `definitions` converted to JSON Schema 2020-12; this script
                    converts it back to swagger 2.0 definitions (see to_swagger below).
  --manifests DIR   a work tree of kubeflow/manifests (the CRD yamls of the Kubeflow kinds).

    pip download --no-deps -d /tmp/kv kubernetes-validate==1.37.0
    (cd /tmp/kv && unzip -q kubernetes_validate-1.37.0-py3-none-any.whl)
    python3 scripts/gen-openapi.py \
        --k8s-defs /tmp/kv/kubernetes_validate/kubernetes-json-schema/v1.32.0-local/_definitions.json \
        --manifests /path/to/kubeflow-manifests

Outputs (compact JSON, sorted keys, so a regeneration diff is meaningful):
  crates/api/openapi/kubernetes.json  {"source": ..., "definitions": {name: schema}}: only the
      definitions the served built-in kinds reach (ROOTS and their $ref closure), with
      `#/definitions/` refs; Quantity and IntOrString in their v3 `oneOf` shape.
  crates/api/openapi/kubeflow.json    {"source": ..., "crds": {"group/version/Kind": openAPIV3Schema}}:
      each served Kubeflow kind's CRD schema as the deployed CRD has it (kustomize JSON patches
      of the CRD applied).
"""

import argparse
import copy
import json
import os
import sys

import yaml

REF_IN = "#/$defs/"
REF_OUT = "#/definitions/"

# The built-in kinds kfsec serves (crates/api/src/registry.rs), their Lists, and the meta types
# the API documents (Status, DeleteOptions, WatchEvent, Patch, discovery documents).
ROOTS = [
    "io.k8s.api.core.v1." + k
    for k in ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "Pod", "ResourceQuota", "Event"]
] + [
    "io.k8s.api.core.v1." + k + "List"
    for k in ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "Pod", "ResourceQuota", "Event"]
] + [
    "io.k8s.api.rbac.v1." + k
    for k in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
              "RoleList", "RoleBindingList", "ClusterRoleList", "ClusterRoleBindingList"]
] + [
    "io.k8s.api.authorization.v1." + k
    for k in ["SelfSubjectAccessReview", "SubjectAccessReview", "LocalSubjectAccessReview",
              "SelfSubjectRulesReview"]
] + [
    "io.k8s.api.authentication.v1." + k
    for k in ["TokenReview", "TokenRequest", "SelfSubjectReview"]
] + [
    "io.k8s.apimachinery.pkg.apis.meta.v1." + k
    for k in ["Status", "DeleteOptions", "WatchEvent", "Patch", "APIResourceList", "APIGroup",
              "APIGroupList", "APIVersions"]
] + ["io.k8s.apimachinery.pkg.version.Info"]

# Served Kubeflow kinds: (group, version, kind) -> (CRD file, CRD name, JSON patch files).
CRDS = {
    ("kubeflow.org", "v1", "Profile"): "applications/profiles/upstream/crd/bases/kubeflow.org_profiles.yaml",
    ("kubeflow.org", "v1beta1", "Profile"): "applications/profiles/upstream/crd/bases/kubeflow.org_profiles.yaml",
    ("kubeflow.org", "v1", "Notebook"): "applications/jupyter/notebook-controller/upstream/crd/bases/kubeflow.org_notebooks.yaml",
    ("kubeflow.org", "v1beta1", "Experiment"): "applications/katib/upstream/components/crd/experiment.yaml",
    ("kubeflow.org", "v1beta1", "Trial"): "applications/katib/upstream/components/crd/trial.yaml",
    ("kubeflow.org", "v1alpha1", "PodDefault"): "applications/admission-webhook/upstream/base/crd.yaml",
    ("kubeflow.org", "v1alpha1", "PVCViewer"): "applications/pvcviewer-controller/upstream/crd/bases/kubeflow.org_pvcviewers.yaml",
    ("serving.kserve.io", "v1beta1", "InferenceService"): "applications/kserve/kserve/kserve.yaml",
}
# kustomize patchesJson6902 applied to the CRD by its kustomization (the deployed schema).
CRD_PATCHES = {
    "applications/jupyter/notebook-controller/upstream/crd/bases/kubeflow.org_notebooks.yaml":
        "applications/jupyter/notebook-controller/upstream/crd/patches/validation_patches.yaml",
}


def to_swagger(node, top_gvk=False):
    """Undoes kubernetes-validate's JSON Schema conversion: `type: [t, "null"]` -> `type: t`,
    `#/$defs/` refs -> `#/definitions/`, the `enum` it adds to apiVersion/kind of top-level kinds
    dropped."""
    if isinstance(node, list):
        return [to_swagger(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "type" and isinstance(v, list):
            ts = [t for t in v if t != "null"]
            out[k] = ts[0] if len(ts) == 1 else ts
        elif k == "$ref" and isinstance(v, str):
            out[k] = REF_OUT + v[len(REF_IN):] if v.startswith(REF_IN) else v
        elif k == "properties":
            props = {}
            for pk, pv in v.items():
                pv = to_swagger(pv)
                if top_gvk and pk in ("apiVersion", "kind") and isinstance(pv, dict):
                    pv.pop("enum", None)
                props[pk] = pv
            out[k] = props
        else:
            out[k] = to_swagger(v)
    return out


def refs(node, acc):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith(REF_OUT):
            acc.add(r[len(REF_OUT):])
        for v in node.values():
            refs(v, acc)
    elif isinstance(node, list):
        for v in node:
            refs(v, acc)


def kubernetes(defs_path):
    src = json.load(open(defs_path))["$defs"]
    out = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        if name not in src:
            sys.exit(f"missing definition {name}")
        # Quantity and IntOrString keep their v3 `oneOf` shape here; kfsec's v2 builder gives
        # them their swagger 2.0 shape (`type: string`, `format: int-or-string`).
        d = to_swagger(src[name], top_gvk="x-kubernetes-group-version-kind" in src[name])
        out[name] = d
        acc = set()
        refs(d, acc)
        todo.extend(sorted(acc - set(out)))
    return out


def json_patch(doc, ops):
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent.insert(int(last), op["value"]) if op["op"] == "add" else parent.__setitem__(int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            sys.exit(f"unsupported patch op {op['op']}")


def kubeflow(manifests):
    out = {}
    for (group, version, kind), rel in sorted(CRDS.items()):
        docs = list(yaml.safe_load_all(open(os.path.join(manifests, rel))))
        crd = next((d for d in docs if d and d.get("kind") == "CustomResourceDefinition"
                    and d["spec"]["group"] == group and d["spec"]["names"]["kind"] == kind), None)
        if crd is None:
            sys.exit(f"no CRD for {group}/{kind} in {rel}")
        crd = copy.deepcopy(crd)
        if rel in CRD_PATCHES:
            json_patch(crd, yaml.safe_load(open(os.path.join(manifests, CRD_PATCHES[rel]))))
        ver = next((v for v in crd["spec"]["versions"] if v["name"] == version), None)
        if ver is None:
            sys.exit(f"no version {version} of {group}/{kind} in {rel}")
        out[f"{group}/{version}/{kind}"] = ver["schema"]["openAPIV3Schema"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k8s-defs", required=True)
    ap.add_argument("--manifests", required=True)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates", "api", "openapi"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    k8s = {"source": "Kubernetes v1.32 swagger definitions (PyPI kubernetes-validate 1.37.0, v1.32.0-local), trimmed by scripts/gen-openapi.py",
           "definitions": kubernetes(a.k8s_defs)}
    kf = {"source": "CRD openAPIV3Schema of kubeflow/manifests (kustomize patches applied), by scripts/gen-openapi.py",
          "crds": kubeflow(a.manifests)}
    for name, doc in (("kubernetes.json", k8s), ("kubeflow.json", kf)):
        p = os.path.join(a.out, name)
        with open(p, "w") as f:
            json.dump(doc, f, sort_keys=True, separators=(",", ":"))
            f.write("\n")
        print(f"{p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
