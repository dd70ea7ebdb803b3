"""The S3 gateway's checks with real clients (run by tests/s3/run.sh, which sets S3T_*): boto3
and the minio SDK with team-a's keys against kfsec's gateway, moto (signatures on) behind it,
and KFP's artifact endpoint with team-a's user's bearer token. One line per check:
`PASS name` or `FAIL name: why`; the last line is `s3: N passed, M failed`; exit 1 on any failure.
"""

import base64
import hashlib
import io
import os
import subprocess
import sys
import time
import traceback
import uuid

import boto3
import requests
import urllib3
from botocore.config import Config
from botocore.exceptions import ClientError
from minio import Minio
from minio.error import S3Error

E = os.environ
GW, CA, MOTO, BUCKET = E["S3T_GATEWAY"], E["S3T_CA"], E["S3T_MOTO"], E["S3T_BUCKET"]
A_AK, A_SK, B_AK, B_SK = E["S3T_A_AK"], E["S3T_A_SK"], E["S3T_B_AK"], E["S3T_B_SK"]
KFP, A_TOKEN = E["S3T_KFP"], E["S3T_A_TOKEN"]
RUN = uuid.uuid4().hex[:8]
OWN = f"private-artifacts/team-a/{RUN}/"
OTHER = f"private-artifacts/team-b/{RUN}/"
SHARED = f"shared/{RUN}/"

passed, failed = 0, 0


def check(name):
    def wrap(fn):
        global passed, failed
        try:
            fn()
        except Exception as e:  # noqa: BLE001 — every failure is reported by name
            failed += 1
            why = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
            print(f"FAIL {name}: {why}", flush=True)
            if E.get("S3T_TRACE"):
                traceback.print_exc()
        else:
            passed += 1
            print(f"PASS {name}", flush=True)
        return fn
    return wrap


def gw(ak=A_AK, sk=A_SK, s3=None, **cfg):
    return boto3.client(
        "s3", endpoint_url=GW, region_name="us-east-1", verify=CA,
        aws_access_key_id=ak, aws_secret_access_key=sk,
        config=Config(s3={"addressing_style": "path", **(s3 or {})}, signature_version="s3v4",
                      retries={"max_attempts": 1}, **cfg))


def moto():
    """moto directly, with the gateway's upstream key (the ground truth of what is stored)."""
    return boto3.client(
        "s3", endpoint_url=MOTO, region_name="us-east-1",
        aws_access_key_id=E["S3T_UPSTREAM_AK"], aws_secret_access_key=E["S3T_UPSTREAM_SK"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def mc(ak=A_AK, sk=A_SK):
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=CA, retries=False)
    return Minio(GW.removeprefix("https://"), access_key=ak, secret_key=sk, secure=True,
                 region="us-east-1", http_client=http)


def code_of(fn):
    """The S3 error code `fn` fails with (None if it succeeds)."""
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    except S3Error as e:
        return e.code
    return None


def expect_code(fn, *codes):
    got = code_of(fn)
    assert got in codes, f"expected {'/'.join(codes)}, got {got or 'success'}"


def absent_upstream(key):
    got = code_of(lambda: moto().head_object(Bucket=BUCKET, Key=key))
    assert got in ("404", "NoSuchKey"), f"the object is upstream (head: {got or 'found'})"


def exists_upstream(key):
    return moto().get_object(Bucket=BUCKET, Key=key)["Body"].read()


# --- seed objects, written upstream directly so that read checks do not depend on writes ------

BODY = b"hello from team-a " + RUN.encode()
SEED = OWN + "seed.txt"
_m = moto()
_m.put_object(Bucket=BUCKET, Key=SEED, Body=BODY)
_m.put_object(Bucket=BUCKET, Key=OTHER + "secret.txt", Body=b"team-b only")
_m.put_object(Bucket=BUCKET, Key=OTHER + "odd & <key>.txt", Body=b"team-b only")
_m.put_object(Bucket=BUCKET, Key=f"private/team-b/{RUN}/notes.txt", Body=b"team-b only")
_up = _m.create_multipart_upload(Bucket=BUCKET, Key=OTHER + "unfinished.bin")
_m.upload_part(Bucket=BUCKET, Key=OTHER + "unfinished.bin", UploadId=_up["UploadId"], PartNumber=1,
               Body=b"team-b's half-written data")
_m.put_object(Bucket=BUCKET, Key=SHARED + "common.txt", Body=b"shared")
_m.put_object(Bucket=BUCKET, Key=f"unowned/{RUN}/x.txt", Body=b"nobody's")

# --- set-up checks --------------------------------------------------------------------------

@check("secrets_written_per_namespace")
def _():
    assert A_AK and A_SK and B_AK and B_SK, "mlpipeline-minio-artifact missing in team-a or team-b"
    assert A_AK != B_AK and A_SK != B_SK, "two namespaces share a key"
    assert len(A_SK) >= 30 and len(B_SK) >= 30, "secret shorter than 30 characters"


@check("moto_checks_signatures")
def _():
    bad = boto3.client("s3", endpoint_url=MOTO, region_name="us-east-1",
                       aws_access_key_id=E["S3T_UPSTREAM_AK"], aws_secret_access_key="x" * 40)
    expect_code(lambda: bad.list_objects_v2(Bucket=BUCKET), "SignatureDoesNotMatch")


# --- boto3 in the own prefix ----------------------------------------------------------------

@check("boto3_get_head_own_prefix")
def _():
    # boto3's default GetObject asks for response checksums (x-amz-checksum-mode: ENABLED).
    s3 = gw()
    assert s3.get_object(Bucket=BUCKET, Key=SEED)["Body"].read() == BODY
    assert s3.head_object(Bucket=BUCKET, Key=SEED)["ContentLength"] == len(BODY)
    r = s3.get_object(Bucket=BUCKET, Key=SEED, Range="bytes=0-4")
    assert r["Body"].read() == BODY[:5], "range"


@check("boto3_put_get_own_prefix")
def _():
    s3 = gw()
    s3.put_object(Bucket=BUCKET, Key=OWN + "hello.txt", Body=BODY)
    assert s3.get_object(Bucket=BUCKET, Key=OWN + "hello.txt")["Body"].read() == BODY
    assert exists_upstream(OWN + "hello.txt") == BODY, "upstream copy differs"
    assert s3.head_object(Bucket=BUCKET, Key=OWN + "hello.txt")["ContentLength"] == len(BODY)


@check("boto3_trailer_checksum_upload")
def _():
    # boto3 ≥ 1.36 sends PutObject over HTTPS as aws-chunked STREAMING-UNSIGNED-PAYLOAD-TRAILER
    # with a CRC32 trailer by default: record what it sent, and that it was stored intact.
    s3 = gw()
    seen = {}

    def text(v):
        return v.decode() if isinstance(v, bytes) else v

    def record(request, **_):
        seen["sha"] = text(request.headers.get("x-amz-content-sha256"))
        seen["trailer"] = text(request.headers.get("x-amz-trailer"))

    s3.meta.events.register("before-send.s3.PutObject", record)
    data = os.urandom(300_000)
    s3.put_object(Bucket=BUCKET, Key=OWN + "trailer.bin", Body=io.BytesIO(data))
    assert seen.get("sha") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", f"boto3 sent {seen}"
    assert exists_upstream(OWN + "trailer.bin") == data, "upstream copy differs"


@check("boto3_signed_payload_upload")
def _():
    # Payload signing on: x-amz-content-sha256 is the body's SHA-256, which the gateway checks.
    s3 = gw(s3={"payload_signing_enabled": True}, request_checksum_calculation="when_required")
    data = os.urandom(70_000)
    s3.put_object(Bucket=BUCKET, Key=OWN + "signed.bin", Body=data)
    assert exists_upstream(OWN + "signed.bin") == data


@check("boto3_list_own_prefix")
def _():
    keys = [o["Key"] for o in gw().list_objects_v2(Bucket=BUCKET, Prefix=OWN).get("Contents", [])]
    assert SEED in keys, keys


@check("boto3_list_shows_only_own_and_shared")
def _():
    # The seeds: one object in each of the own prefix, team-b's prefix, shared/, and a prefix
    # no namespace owns.
    s3 = gw()
    keys, prefixes = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += [o["Key"] for o in page.get("Contents", [])]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="private-artifacts/", Delimiter="/"):
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert SEED in keys and SHARED + "common.txt" in keys, keys
    bad = [k for k in keys if not (k.startswith(("private-artifacts/team-a/", "private/team-a/", "artifacts/", "shared/")))]
    assert not bad, f"listing shows {bad}"
    assert prefixes == ["private-artifacts/team-a/"], f"common prefixes {prefixes}"


@check("boto3_broad_listing_pages_on_sealed_markers_only")
def _():
    # One key a page: every page's token is sealed (same length whatever key it stands for),
    # and the walk still ends with the own keys; V1 (marker) and V2 (continuation token) both.
    s3 = gw()
    keys, tokens = [], set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="private-artifacts/", PaginationConfig={"PageSize": 1}
    ):
        keys += [o["Key"] for o in page.get("Contents", [])]
        if page.get("NextContinuationToken"):
            tokens.add(len(page["NextContinuationToken"]))
    assert SEED in keys and not [k for k in keys if "team-b" in k], keys
    assert len(tokens) <= 1, f"sealed token lengths vary: {tokens}"
    v1 = []
    for page in s3.get_paginator("list_objects").paginate(
        Bucket=BUCKET, Prefix="private-artifacts/", PaginationConfig={"PageSize": 1}
    ):
        v1 += [o["Key"] for o in page.get("Contents", [])]
    assert SEED in v1 and not [k for k in v1 if "team-b" in k], v1
    # A chosen marker or another delimiter in a broad listing would bisect team-b's names.
    expect_code(
        lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="private-artifacts/", StartAfter="private-artifacts/team-b/"),
        "InvalidArgument",
    )
    expect_code(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="private-artifacts/", Delimiter="-"), "InvalidArgument")
    # Inside the own prefix, StartAfter is the client's to choose.
    s3.list_objects_v2(Bucket=BUCKET, Prefix=OWN, StartAfter=OWN)


@check("boto3_multipart_own_prefix")
def _():
    s3 = gw()
    key = OWN + "multi.bin"
    part1, part2 = os.urandom(5 * 1024 * 1024), os.urandom(123_456)
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    e1 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=part1)["ETag"]
    e2 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], PartNumber=2, Body=part2)["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"ETag": e1, "PartNumber": 1}, {"ETag": e2, "PartNumber": 2}]})
    got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(part1 + part2).digest(), "content differs"


@check("boto3_upload_file_transfer_manager")
def _():
    # s3transfer's multipart (8 MiB threshold) with its default checksums.
    path = os.path.join(E["S3T_TMP"], "big.bin")
    data = os.urandom(9 * 1024 * 1024)
    with open(path, "wb") as f:
        f.write(data)
    gw().upload_file(path, BUCKET, OWN + "big.bin")
    assert hashlib.sha256(exists_upstream(OWN + "big.bin")).digest() == hashlib.sha256(data).digest()


@check("boto3_presigned_get_and_put")
def _():
    s3 = gw()
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": SEED}, ExpiresIn=300)
    r = requests.get(url, verify=CA, timeout=10)
    assert r.status_code == 200 and r.content == BODY, f"GET {r.status_code} {r.text[:200]}"
    url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": OWN + "presigned.txt"}, ExpiresIn=300)
    r = requests.put(url, data=b"via presigned put", verify=CA, timeout=10)
    assert r.status_code == 200, f"PUT {r.status_code} {r.text[:200]}"
    assert exists_upstream(OWN + "presigned.txt") == b"via presigned put"


@check("boto3_presigned_expired_refused")
def _():
    url = gw().generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": SEED}, ExpiresIn=1)
    time.sleep(2.2)
    r = requests.get(url, verify=CA, timeout=10)
    assert r.status_code == 403 and "<Code>AccessDenied</Code>" in r.text, f"{r.status_code} {r.text[:300]}"


# --- isolation ------------------------------------------------------------------------------

@check("boto3_other_namespace_prefix_denied")
def _():
    s3 = gw()
    expect_code(lambda: s3.put_object(Bucket=BUCKET, Key=OTHER + "planted.txt", Body=b"x"), "AccessDenied")
    absent_upstream(OTHER + "planted.txt")
    expect_code(lambda: s3.get_object(Bucket=BUCKET, Key=OTHER + "secret.txt"), "AccessDenied")
    expect_code(lambda: s3.delete_object(Bucket=BUCKET, Key=OTHER + "secret.txt"), "AccessDenied")
    expect_code(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=OTHER), "AccessDenied")
    expect_code(lambda: s3.copy_object(Bucket=BUCKET, Key=OWN + "stolen.txt",
                                       CopySource={"Bucket": BUCKET, "Key": OTHER + "secret.txt"}), "AccessDenied")
    absent_upstream(OWN + "stolen.txt")


@check("hostile_keys_cannot_leave_the_prefix")
def _():
    s3 = gw()
    for key in (OWN + "../../team-b/" + RUN + "/secret.txt", OWN + "./x", OWN + "/x",
                "private-artifacts/team-a%2F..%2Fteam-b/" + RUN + "/secret.txt"):
        got = code_of(lambda k=key: s3.get_object(Bucket=BUCKET, Key=k))
        assert got in ("AccessDenied", "InvalidArgument", "InvalidRequest", "400", "403"), f"{key!r}: {got or 'read'}"


@check("boto3_wrong_secret_signature_mismatch")
def _():
    expect_code(lambda: gw(sk=A_SK[:-1] + ("x" if A_SK[-1] != "x" else "y")).list_objects_v2(Bucket=BUCKET, Prefix=OWN),
                "SignatureDoesNotMatch")


@check("boto3_unknown_key_refused")
def _():
    expect_code(lambda: gw(ak="KFUNKNOWNUNKNOWN0000", sk=A_SK).list_objects_v2(Bucket=BUCKET, Prefix=OWN),
                "InvalidAccessKeyId")


# --- checksums ------------------------------------------------------------------------------

@check("bad_sha256_checksum_refused_and_absent_upstream")
def _():
    key = OWN + "bad-sha256.txt"
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    expect_code(lambda: gw().put_object(Bucket=BUCKET, Key=key, Body=b"the real body", ChecksumSHA256=wrong),
                "BadDigest", "XAmzContentChecksumMismatch")
    absent_upstream(key)


@check("bad_content_md5_refused_and_absent_upstream")
def _():
    key = OWN + "bad-md5.txt"
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    s3 = gw(request_checksum_calculation="when_required")
    expect_code(lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"the real body", ContentMD5=wrong), "BadDigest")
    absent_upstream(key)


@check("bad_trailer_crc32_refused_and_absent_upstream")
def _():
    # A trailer-checksum upload whose trailer does not match: rewrite the CRC32 boto3 computed.
    key = OWN + "bad-trailer.bin"
    s3 = gw()

    def corrupt(request, **_):
        body = request.body
        raw = body.read() if hasattr(body, "read") else bytes(body)
        raw = raw.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32:AAAA", 1)
        # keep the trailer value the same length: drop the 4 characters after the inserted ones
        i = raw.find(b"x-amz-checksum-crc32:AAAA") + len(b"x-amz-checksum-crc32:AAAA")
        raw = raw[:i] + raw[i + 4:]
        request.body = raw

    s3.meta.events.register("before-send.s3.PutObject", corrupt)
    expect_code(lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=io.BytesIO(b"trailer body " * 1000)),
                "BadDigest", "XAmzContentChecksumMismatch", "InvalidRequest")
    absent_upstream(key)


# --- minio SDK ------------------------------------------------------------------------------

@check("minio_put_get_list_own_prefix")
def _():
    c = mc()
    data = b"minio sdk " + RUN.encode()
    c.put_object(BUCKET, OWN + "minio.txt", io.BytesIO(data), len(data))
    r = c.get_object(BUCKET, OWN + "minio.txt")
    try:
        assert r.read() == data
    finally:
        r.close()
        r.release_conn()
    names = [o.object_name for o in c.list_objects(BUCKET, prefix=OWN, recursive=True)]
    assert OWN + "minio.txt" in names, names


@check("minio_multipart_own_prefix")
def _():
    data = os.urandom(11 * 1024 * 1024)
    mc().put_object(BUCKET, OWN + "minio-multi.bin", io.BytesIO(data), -1, part_size=5 * 1024 * 1024)
    assert hashlib.sha256(exists_upstream(OWN + "minio-multi.bin")).digest() == hashlib.sha256(data).digest()


@check("minio_presigned_get")
def _():
    from datetime import timedelta
    url = mc().presigned_get_object(BUCKET, SEED, expires=timedelta(minutes=5))
    r = requests.get(url, verify=CA, timeout=10)
    assert r.status_code == 200 and r.content == BODY, f"{r.status_code} {r.text[:200]}"


@check("minio_other_namespace_denied")
def _():
    c = mc()
    expect_code(lambda: c.get_object(BUCKET, OTHER + "secret.txt"), "AccessDenied")
    expect_code(lambda: c.put_object(BUCKET, OTHER + "planted2.txt", io.BytesIO(b"x"), 1), "AccessDenied")
    absent_upstream(OTHER + "planted2.txt")


@check("minio_wrong_secret_signature_mismatch")
def _():
    expect_code(lambda: list(mc(sk="y" * 40).list_objects(BUCKET, prefix=OWN)), "SignatureDoesNotMatch")


@check("team_b_key_reaches_only_team_b")
def _():
    s3 = gw(B_AK, B_SK)
    assert s3.get_object(Bucket=BUCKET, Key=OTHER + "secret.txt")["Body"].read() == b"team-b only"
    expect_code(lambda: s3.get_object(Bucket=BUCKET, Key=SEED), "AccessDenied")


# --- KFP's artifact endpoint ------------------------------------------------------------------

def artifact(ns, key, token=A_TOKEN, path="/pipeline/artifacts/get", **extra):
    params = {"source": "s3", "namespace": ns, "bucket": BUCKET, "key": key, **extra}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{KFP}{path}", params=params, headers=headers, verify=CA, timeout=10,
                        allow_redirects=False)


@check("kfp_artifact_own_namespace_served")
def _():
    assert A_TOKEN, "no ID token for team-a's user (login failed)"
    r = artifact("team-a", SEED)
    assert r.status_code == 200 and r.content == BODY, f"{r.status_code} {r.text[:200]}"
    assert r.headers.get("x-content-type-options") == "nosniff"
    r = artifact("team-a", SEED, path="/artifacts/get", source="minio")
    assert r.status_code == 200 and r.content == BODY, f"/artifacts/get: {r.status_code} {r.text[:200]}"
    r = artifact("team-a", SEED, peek="5")
    assert r.status_code == 200 and r.content == BODY[:5], f"peek: {r.status_code} {r.content[:50]!r}"


@check("kfp_artifact_other_namespace_403")
def _():
    r = artifact("team-b", OTHER + "secret.txt")
    assert r.status_code == 403, f"{r.status_code} {r.text[:200]}"
    r = artifact("team-a", OTHER + "secret.txt")
    assert r.status_code == 403, f"own namespace, other's key: {r.status_code} {r.text[:200]}"
    r = artifact("team-a", OWN + "../../team-b/" + RUN + "/secret.txt")
    assert r.status_code in (400, 403), f"dot segments: {r.status_code} {r.text[:200]}"


@check("kfp_artifact_missing_404_and_rules")
def _():
    r = artifact("team-a", OWN + "no-such-object")
    assert r.status_code == 404, f"{r.status_code} {r.text[:200]}"
    r = artifact("", SEED)
    assert r.status_code == 400 and "Namespace parameter is required" in r.text, f"{r.status_code} {r.text[:200]}"
    r = artifact("team-a", SEED, token=None)
    assert r.status_code in (401, 302, 303), f"anonymous: {r.status_code}"


def kfp_api(method, path, token, body=None):
    r = requests.request(method, f"{KFP}/pipeline/apis/{path}", json=body, verify=CA, timeout=10,
                         headers={"Authorization": f"Bearer {token}"})
    return r.status_code, (r.json() if r.content else {})


@check("kfp_read_artifact_of_a_run")
def _():
    # KFP's ReadArtifact: the key comes from the workflow the persistence agent reported; a
    # workflow status naming another namespace's key is refused.
    assert A_TOKEN and E["S3T_AGENT_TOKEN"], "tokens missing"
    s, v = kfp_api("POST", "v2beta1/experiments", A_TOKEN, {"display_name": f"e-{RUN}", "namespace": "team-a"})
    assert s == 200, f"experiment: {s} {v}"
    exp = v["experiment_id"]
    spec = {"pipelineInfo": {"name": "p"}, "root": {"dag": {"tasks": {}}},
            "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.14.6"}
    runs = {}
    for name, key in (("own", SEED), ("other", OTHER + "secret.txt")):
        s, v = kfp_api("POST", "v2beta1/runs", A_TOKEN, {"display_name": name, "experiment_id": exp, "pipeline_spec": spec})
        assert s == 200, f"run: {s} {v}"
        runs[name] = v["run_id"]
        wf = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
              "metadata": {"name": f"wf-{name}-{RUN}", "namespace": "team-a", "uid": f"u-{name}-{RUN}",
                           "labels": {"pipeline/runid": v["run_id"]}},
              "status": {"phase": "Succeeded", "nodes": {"n1": {"outputs": {"artifacts": [
                  {"name": "out", "s3": {"bucket": BUCKET, "key": key}}]}}}}}
        r = requests.post(f"{KFP}/apis/v1beta1/workflows", json=wf, verify=CA, timeout=10,
                          headers={"Authorization": f"Bearer {E['S3T_AGENT_TOKEN']}"})
        assert r.status_code == 200, f"report: {r.status_code} {r.text[:200]}"
    s, v = kfp_api("GET", f"v1beta1/runs/{runs['own']}/nodes/n1/artifacts/out:read", A_TOKEN)
    assert s == 200 and base64.b64decode(v.get("data", "")) == BODY, f"own: {s} {v}"
    s, v = kfp_api("GET", f"v2beta1/runs/{runs['other']}/nodes/n1/artifacts/out:read", A_TOKEN)
    assert s == 403 and "data" not in v, f"other namespace's key: {s} {v}"


# --- rotation and revocation (last: they change the keys) ----------------------------------------

def kfsec(*args):
    return subprocess.run([E["KFSEC_BIN"], *args, "--data-dir", E["S3T_DATA"]],
                          capture_output=True, text=True, timeout=30)


def secret_of(ns):
    out = subprocess.run(["kubectl", "--kubeconfig", E["S3T_KUBECONFIG"], "get", "secret", "mlpipeline-minio-artifact",
                          "-n", ns, "-o", "jsonpath={.data.accesskey} {.data.secretkey}"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return tuple(base64.b64decode(x).decode() for x in out) if len(out) == 2 else ("", "")


@check("rotated_key_overlap_then_only_new")
def _():
    r = kfsec("s3", "rotate", "-n", "team-a", "--overlap", "5s")
    assert r.returncode == 0, f"kfsec s3 rotate: {r.stderr.strip()[:300]}"
    t0 = time.monotonic()
    new_ak, new_sk = A_AK, A_SK
    for _ in range(50):
        new_ak, new_sk = secret_of("team-a")
        if new_ak and new_ak != A_AK:
            break
        time.sleep(0.1)
    assert new_ak != A_AK, "the Secret still holds the old key"
    gw(new_ak, new_sk).head_object(Bucket=BUCKET, Key=SEED)
    gw().head_object(Bucket=BUCKET, Key=SEED)  # old key, within the overlap
    assert time.monotonic() - t0 < 5, "too slow to test the overlap"
    time.sleep(max(0.0, 5 - (time.monotonic() - t0)) + 3)  # past the overlap and the lookup cache
    expect_code(lambda: gw().list_objects_v2(Bucket=BUCKET, Prefix=OWN), "InvalidAccessKeyId")
    gw(new_ak, new_sk).head_object(Bucket=BUCKET, Key=SEED)


@check("deleted_profile_key_revoked")
def _():
    gw(B_AK, B_SK).head_object(Bucket=BUCKET, Key=OTHER + "secret.txt")
    out = subprocess.run(["kubectl", "--kubeconfig", E["S3T_KUBECONFIG"], "delete", "profile", "team-b", "--wait=false"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if code_of(lambda: gw(B_AK, B_SK).head_object(Bucket=BUCKET, Key=OTHER + "secret.txt")):
            break
        time.sleep(0.25)
    expect_code(lambda: gw(B_AK, B_SK).list_objects_v2(Bucket=BUCKET, Prefix=OTHER), "InvalidAccessKeyId")


@check("deleted_profile_objects_purged_shared_kept")
def _():
    # The namespace goes with the Profile, and its own prefixes are emptied first: a later
    # namespace of the same name, perhaps another user's, would get a key to them.
    deadline = time.monotonic() + 20
    while True:
        r = subprocess.run(["kubectl", "--kubeconfig", E["S3T_KUBECONFIG"], "get", "namespace", "team-b"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert r.returncode != 0, "the namespace team-b stayed"
    m = moto()
    for prefix in ("private-artifacts/team-b/", "private/team-b/"):
        left = m.list_object_versions(Bucket=BUCKET, Prefix=prefix).get("Versions", [])
        assert not left, f"{prefix} kept {[v['Key'] for v in left][:5]}"
        uploads = m.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
        assert not uploads, f"{prefix} kept unfinished uploads {[u['Key'] for u in uploads][:5]}"
    for key in (SEED, SHARED + "common.txt", f"unowned/{RUN}/x.txt"):
        exists_upstream(key)


print(f"s3: {passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
