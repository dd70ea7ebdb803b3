"""Bootstraps moto's S3 server as kfsec's upstream: with moto's first three unauthenticated
actions (INITIAL_NO_AUTH_ACTION_COUNT=3) it creates the IAM user `kfsec-gateway`, an access key
and a policy allowing every S3 action; the key is written to the two files given, and the
pipelines bucket is created with it — the first signed request, so signatures are checked from
then on (a request signed with a wrong secret must fail, or this script does).

Usage: python moto_setup.py MOTO_URL ACCESS_KEY_FILE SECRET_KEY_FILE BUCKET
"""

import json
import os
import sys

import boto3
from botocore.exceptions import ClientError


def main():
    url, ak_file, sk_file, bucket = sys.argv[1:5]
    anon = dict(endpoint_url=url, region_name="us-east-1",
                aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="kfsec-gateway")  # free action 1
    key = iam.create_access_key(UserName="kfsec-gateway")["AccessKey"]  # free action 2
    iam.put_user_policy(  # free action 3
        UserName="kfsec-gateway", PolicyName="s3-all",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    for path, value in ((ak_file, key["AccessKeyId"]), (sk_file, key["SecretAccessKey"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
    s3.create_bucket(Bucket=bucket)
    bad = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id=key["AccessKeyId"], aws_secret_access_key="wrong" + key["SecretAccessKey"])
    try:
        bad.list_objects_v2(Bucket=bucket)
    except ClientError as e:
        if e.response["Error"]["Code"] != "SignatureDoesNotMatch":
            raise SystemExit(f"moto: a wrong secret gave {e.response['Error']['Code']}, not SignatureDoesNotMatch")
    else:
        raise SystemExit("moto accepted a wrong secret: signature checking is off")


if __name__ == "__main__":
    main()
