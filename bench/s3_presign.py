"""Prints a SigV4 presigned URL (stdlib only), for bench/s3.sh's wrk runs.

Usage: python3 s3_presign.py METHOD ENDPOINT BUCKET KEY ACCESS_KEY SECRET_KEY [EXPIRES] [REGION]
(ENDPOINT like https://127.0.0.1:9000; path style; payload UNSIGNED-PAYLOAD, host the only
signed header, as the AWS SDKs presign.)
"""

import datetime
import hashlib
import hmac
import sys
import urllib.parse


def enc(s, slash=False):
    return urllib.parse.quote(s, safe="-_.~" + ("/" if slash else ""))


def main():
    method, endpoint, bucket, key, ak, sk = sys.argv[1:7]
    expires = sys.argv[7] if len(sys.argv) > 7 else "3600"
    region = sys.argv[8] if len(sys.argv) > 8 else "us-east-1"
    host = urllib.parse.urlsplit(endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/{region}/s3/aws4_request"
    path = f"/{enc(bucket)}/{enc(key, slash=True)}"
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{ak}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": expires,
        "X-Amz-SignedHeaders": "host",
    }
    canonical_query = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(query.items()))
    canonical = "\n".join([method, path, canonical_query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + sk).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    print(f"{endpoint}{path}?{canonical_query}&X-Amz-Signature={sig}")


if __name__ == "__main__":
    main()
