#!/usr/bin/env python3
"""Records requests as real S3 clients sign them, for kfsec-s3's SigV4 verifier tests.

Runs boto3/botocore and the minio SDK against a fake transport (nothing is sent), and writes
client_vectors.json beside this file: method, target, headers, the wire body (base64) and the
decoded body the gateway must pass on. Regenerate with the venv of tests/s3/run.sh:
    tests/s3/.venv/bin/python crates/s3/testdata/client_vectors.py
"""
import base64
import io
import json
import os
import sys

AK = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
BUCKET = "mlpipeline"
KEY = "private-artifacts/ns-a/run 1/a+b~c=d&e%f/ünï €.txt"
BODY = b"hello, kfsec gateway\n" * 3
OUT = []


def record(client, name, method, url, headers, body, decoded):
    if body is None:
        body = b""
    elif hasattr(body, "read"):
        body = body.read()
    if isinstance(body, str):
        body = body.encode()
    if decoded is None:  # the wire body is the body
        decoded = body
    target = url.split("://", 1)[1]
    host, _, path = target.partition("/")
    hdrs = []
    for k, v in headers.items():
        if k.lower() == "user-agent":  # unsigned, and names the machine
            continue
        if isinstance(v, bytes):
            v = v.decode()
        hdrs.append([k, str(v)])
    if not any(k.lower() == "host" for k, _ in hdrs):
        hdrs.append(["host", host])
    OUT.append({
        "client": client,
        "name": name,
        "method": method,
        "target": "/" + path,
        "headers": hdrs,
        "body_b64": base64.b64encode(body).decode(),
        "decoded_b64": base64.b64encode(decoded).decode(),
    })


def boto_cases():
    import boto3
    import botocore
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    for scheme in ("https", "http"):
        s3 = boto3.client(
            "s3",
            endpoint_url=f"{scheme}://localhost:9000",
            aws_access_key_id=AK,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}),
        )
        current = {}

        def before_send(request, **kw):
            record(f"boto3 {boto3.__version__} {scheme}", current["name"], request.method,
                   request.url, request.headers, request.body, current.get("decoded", b""))
            body = current.get("response", b"")
            return AWSResponse(request.url, 200, {"ETag": '"x"', "Content-Length": str(len(body))},
                               _Raw(body))

        s3.meta.events.register("before-send", before_send)

        def call(name, fn, decoded=b"", response=b"", **kw):
            current.update(name=name, decoded=decoded, response=response)
            try:
                fn(**kw)
            except Exception as e:  # a fake response may not parse; the request was recorded
                pass

        call("put_object", s3.put_object, BODY, Bucket=BUCKET, Key=KEY, Body=BODY)
        call("put_object sha256", s3.put_object, BODY, Bucket=BUCKET, Key=KEY, Body=BODY,
             ChecksumAlgorithm="SHA256")
        call("put_object content-md5", s3.put_object, BODY, Bucket=BUCKET, Key=KEY, Body=BODY,
             ContentMD5=base64.b64encode(__import__("hashlib").md5(BODY).digest()).decode(),
             ContentType="text/plain; charset=utf-8", Metadata={"Owner": "ns-a  x"})
        call("get_object range", s3.get_object, Bucket=BUCKET, Key=KEY, Range="bytes=0-9")
        call("head_object", s3.head_object, Bucket=BUCKET, Key=KEY)
        call("list_objects_v2", s3.list_objects_v2, Bucket=BUCKET, Prefix="private-artifacts/ns-a/ü ",
             Delimiter="/", MaxKeys=5, StartAfter="a=b&c")
        call("upload_part", s3.upload_part, BODY, Bucket=BUCKET, Key=KEY, UploadId="up/1+2=",
             PartNumber=3, Body=BODY)
        call("delete_objects", s3.delete_objects, None, Bucket=BUCKET,
             Delete={"Objects": [{"Key": KEY}]})
        if scheme == "https":
            # boto3's default presigner is SigV2 (AWSAccessKeyId/Signature/Expires): refused.
            url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": KEY},
                                            ExpiresIn=3600)
            record(f"boto3 {boto3.__version__} {scheme}", "presigned get_object SigV2", "GET", url,
                   {}, b"", b"")
            v4 = boto3.client(
                "s3",
                endpoint_url=f"{scheme}://localhost:9000",
                aws_access_key_id=AK,
                aws_secret_access_key=SECRET,
                region_name="us-east-1",
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
            url = v4.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": KEY},
                                            ExpiresIn=3600)
            record(f"boto3 {boto3.__version__} {scheme}", "presigned get_object", "GET", url,
                   {}, b"", b"")
            url = v4.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": KEY},
                                            ExpiresIn=600)
            # As `requests.put(url, data=BODY)` sends it.
            record(f"boto3 {boto3.__version__} {scheme}", "presigned put_object", "PUT", url,
                   {"Content-Length": str(len(BODY))}, BODY, BODY)


class _Raw(io.BytesIO):
    def stream(self, *a, **k):
        yield self.getvalue()


def minio_cases():
    import minio

    class Resp:
        status = 200
        data = b""
        headers = {"ETag": '"x"', "x-amz-request-id": "1"}

        def __init__(self, data=b""):
            self.data = data

        def stream(self, *a, **k):
            yield self.data

        def close(self):
            pass

        def release_conn(self):
            pass

        def getheader(self, k, d=None):
            return self.headers.get(k, d)

    import urllib3

    class Pool(urllib3.PoolManager):
        current = {}

        def urlopen(self, method, url, body=None, headers=None, preload_content=True, **kw):
            record(f"minio {minio.__version__}", self.current["name"], method, url, dict(headers or {}),
                   body, self.current.get("decoded", b""))
            return Resp(self.current.get("response", b""))

    pool = Pool()
    m = minio.Minio("localhost:9000", access_key=AK, secret_key=SECRET, secure=True,
                    region="us-east-1", http_client=pool)

    def call(name, fn, *a, decoded=b"", response=b"", **kw):
        pool.current.update(name=name, decoded=decoded, response=response)
        try:
            fn(*a, **kw)
        except Exception:
            pass

    call("put_object", m.put_object, BUCKET, KEY, io.BytesIO(BODY), len(BODY), decoded=BODY)
    call("get_object", m.get_object, BUCKET, KEY, offset=0, length=10)
    call("stat_object", m.stat_object, BUCKET, KEY)
    call("list_objects", lambda: list(m.list_objects(BUCKET, prefix="private-artifacts/ns-a/", recursive=True)),
         response=b'<?xml version="1.0"?><ListBucketResult></ListBucketResult>')
    url = m.presigned_get_object(BUCKET, KEY)
    record(f"minio {minio.__version__}", "presigned_get_object", "GET", url, {}, b"", b"")
    # Over plain http the minio SDK signs the body's SHA-256.
    plain = minio.Minio("localhost:9000", access_key=AK, secret_key=SECRET, secure=False,
                        region="us-east-1", http_client=pool)
    call("put_object http", plain.put_object, BUCKET, KEY, io.BytesIO(BODY), len(BODY),
         decoded=BODY, metadata={"x-amz-meta-run": "1  2"}, content_type="text/plain")


boto_cases()
minio_cases()
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "client_vectors.json")
with open(path, "w") as f:
    json.dump(OUT, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(f"{len(OUT)} requests -> {path}", file=sys.stderr)
