"""infra/lake.yaml: linted, deployed through CloudFormation on a moto server, and exercised by a real
ingest under moto's IAM enforcement, with the credentials of the roles the stack creates.

What moto 5.2.5 does not model, and how these tests deal with it:
- Its CloudFormation skips AWS::S3::BucketPolicy and AWS::IAM::OIDCProvider (no model has that
  cloudformation_type; parsing.py warns "Tried to parse ... not supported") and, for
  AWS::S3::Bucket, applies only BucketName, BucketEncryption and Tags
  (s3/models.py, FakeBucket.create_from_cloudformation_json). Versioning, the public access
  block, ownership controls, the lifecycle rules and the bucket policy are therefore checked in the
  template itself (after cfn-lint has checked it against CloudFormation's schemas); encryption
  and the IAM roles are checked as S3 and IAM report them. The stacks here reuse an OIDC provider
  made through IAM's API (CreateGitHubOidcProvider=false).
- Its IAM enforcement (iam/access_control.py) checks actions and resources, not conditions, of
  identity policies, evaluates no bucket policy, and does not check AssumeRoleWithWebIdentity's
  token or trust policy. So these tests prove which actions on which keys the roles' policies
  allow; the trust policies and s3:prefix conditions are checked as IAM reports them.
- It authorizes HeadBucket as `s3:HeadBucket` (s3/responses.py, ACTION_MAP), an action IAM does
  not have (AWS checks s3:ListBucket, which the ingest role has on the bucket). The ingest test
  gives the role that one translated permission, after showing it is needed.

moto's settings and backends are process-wide: enforcement is switched on only around the calls
made with the roles' credentials, and off again before anything else runs.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from cfnlint.api import lint_file
from cfnlint.config import ManualArgs
from cfnlint.decode import decode
from cfnlint.helpers import REGIONS
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import ExitCode
from stock_pipeline.lake import partition_path
from stock_pipeline.simulator import Fault, SimulatorConfig, SimulatorThread
from tests.support import API_KEY, REPO, moto_server, write_tickers

TEMPLATE = REPO / "infra" / "lake.yaml"
REGION = "us-east-1"
#: Not the default `fmp`, and nested, so every use of the parameter is exercised.
LAKE_PREFIX = "market/fmp"
CHECKPOINT_PREFIX = "_checkpoints"
REPOSITORY = "acme/stock-pipeline"
EXTERNAL_ID = "databricks-account-0123"
UNITY_CATALOG_ROLE = "arn:aws:iam::414351767826:role/unity-catalog-prod-UCMasterRole-14S5ZJVKOTYTL"
GITHUB_OIDC_URL = "https://token.actions.githubusercontent.com"

pytestmark = pytest.mark.filterwarnings(
    # moto's CloudFormation says so for every resource type it skips (see the module docstring).
    "ignore:Tried to parse AWS..S3..BucketPolicy but it's not supported:UserWarning",
)

runner = CliRunner()


def invoke(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """The CLI in this process, as a fresh process would run it with `env`."""
    # boto3's default session keeps the credentials it found first; each run here has others.
    boto3.DEFAULT_SESSION = None
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode(str(TEMPLATE))
    assert not matches, [str(m) for m in matches]
    assert decoded is not None
    return dict(decoded)


# --- the template as written ---------------------------------------------------------------------


def test_template_passes_cfn_lint() -> None:
    """Errors and warnings, as `cfn-lint infra/lake.yaml` reports them, in every region."""
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=REGIONS))
    assert [str(m) for m in matches] == []


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _sub(value: dict[str, Any], **parameters: str) -> str:
    """A `!Sub "...${Name}..."` string with `parameters` filled in."""
    text: str = value["Fn::Sub"]
    for name, replacement in parameters.items():
        text = text.replace(f"${{{name}}}", replacement)
    assert "${" not in text, text
    return text


def _quarantine_expiry(template: dict[str, Any]) -> str:
    """The key prefix the quarantine lifecycle rule expires, for LAKE_PREFIX."""
    [bucket] = _resources(template, "AWS::S3::Bucket").values()
    [rule] = [
        r
        for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]
        if r["Id"] == "expire-quarantine"
    ]
    return _sub(rule["Prefix"], LakePrefix=LAKE_PREFIX)


def test_bucket_is_versioned_private_owner_enforced_and_kept(template: dict[str, Any]) -> None:
    [bucket] = _resources(template, "AWS::S3::Bucket").values()
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert properties["OwnershipControls"] == {
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]
    }
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    [encryption] = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption == {
        "Fn::If": [
            "UseKms",
            {
                "ServerSideEncryptionByDefault": {
                    "SSEAlgorithm": "aws:kms",
                    "KMSMasterKeyID": {"Ref": "KmsKeyArn"},
                },
                "BucketKeyEnabled": True,
            },
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}},
        ]
    }
    rules = {r["Id"]: r for r in properties["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-quarantine"]["ExpirationInDays"] == {"Ref": "QuarantineExpirationDays"}
    noncurrent = rules["expire-noncurrent-versions"]
    assert noncurrent["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionExpirationDays"}
    }
    assert noncurrent["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert "Prefix" not in noncurrent  # the whole bucket
    assert all(r["Status"] == "Enabled" for r in rules.values())


def test_bucket_policy_refuses_plain_http_and_other_encryption(template: dict[str, Any]) -> None:
    [policy] = _resources(template, "AWS::S3::BucketPolicy").values()
    assert policy["Properties"]["Bucket"] == {"Ref": "LakeBucket"}
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    [tls] = [s for s in statements if s.get("Sid") == "DenyInsecureTransport"]
    assert tls["Effect"] == "Deny"
    assert tls["Principal"] == "*"
    assert tls["Action"] == "s3:*"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert tls["Resource"] == [
        {"Fn::GetAtt": ["LakeBucket", "Arn"]},
        {"Fn::Sub": "${LakeBucket.Arn}/*"},
    ]
    # With a KMS key: an upload that names another encryption or another key, never one that
    # names none.
    kms = [s["Fn::If"] for s in statements if "Fn::If" in s]
    assert [(condition, otherwise) for condition, _, otherwise in kms] == [
        ("UseKms", {"Ref": "AWS::NoValue"})
    ] * 2
    denies = {deny["Sid"]: deny for _, deny, _ in kms}
    for deny in denies.values():
        assert (deny["Effect"], deny["Action"]) == ("Deny", "s3:PutObject")
    assert denies["DenyUploadsEncryptedOtherwise"]["Condition"] == {
        "Null": {"s3:x-amz-server-side-encryption": "false"},
        "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
    }
    assert denies["DenyUploadsUnderAnotherKey"]["Condition"] == {
        "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "false"},
        "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": {"Ref": "KmsKeyArn"}},
    }


def test_the_checkpoint_prefix_can_never_hold_or_sit_inside_the_lake(
    template: dict[str, Any],
) -> None:
    lake = re.compile(template["Parameters"]["LakePrefix"]["AllowedPattern"])
    checkpoints = re.compile(template["Parameters"]["CheckpointPrefix"]["AllowedPattern"])
    for good in ("fmp", "market/fmp", "data.v2/fmp_raw"):
        assert lake.fullmatch(good), good
    for bad in ("_checkpoints", "_ck/fmp", "/fmp", "fmp/", ""):
        assert not lake.fullmatch(bad), bad
    assert checkpoints.fullmatch("_checkpoints")
    # Inside the lake, above it, nested, or not marked: all refused.
    for bad in ("fmp/_ck", "market", "_ck/nested", "checkpoints", "_"):
        assert not checkpoints.fullmatch(bad), bad


def test_quarantine_expiry_covers_exactly_what_the_ingester_quarantines(
    template: dict[str, Any],
) -> None:
    expires = _quarantine_expiry(template)
    day = dt.date(2025, 3, 14)
    for dataset in DATASETS.values():
        quarantined = f"{LAKE_PREFIX}/{partition_path(dataset, day, 'run', quarantine=True)}"
        landed = f"{LAKE_PREFIX}/{partition_path(dataset, day, 'run')}"
        assert quarantined.startswith(expires), (quarantined, expires)
        assert not landed.startswith(expires), (landed, expires)


# --- deployed on moto ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Aws:
    endpoint: str

    def client(self, service: str, **credentials: str) -> Any:
        credentials = credentials or {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, **credentials)

    def _reset_auth(self, unchecked_requests: str) -> str:
        """moto checks requests after the next `unchecked_requests`; returns the previous count."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=unchecked_requests.encode(),
            # moto reads the raw body, which a form content type (urllib's default) would hide
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(json.load(answer)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])

    @contextmanager
    def enforcing_iam(self) -> Iterator[None]:
        """moto checks every request's signature and the caller's IAM policies meanwhile."""
        previous = self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth(previous)


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    """A moto server of this module's own, with the GitHub OIDC provider an account would have."""
    with moto_server() as endpoint:
        found = Aws(endpoint)
        # moto imports a service's code on its first request, and its IAM checks on the first
        # enforced one. Doing both now, from this thread, keeps those imports from racing the
        # test's own (see tests/conftest.py, s3_endpoint).
        importlib.import_module("moto.iam.access_control")
        for service, call in (("s3", "list_buckets"), ("sts", "get_caller_identity"),
                              ("cloudformation", "list_stacks")):  # fmt: skip
            getattr(found.client(service), call)()
        found.client("iam").create_open_id_connect_provider(
            Url=GITHUB_OIDC_URL, ClientIDList=["sts.amazonaws.com"]
        )
        yield found
        # moto's state outlives its server (it is the process's): leave no provider behind.
        iam = found.client("iam")
        for provider in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
            iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=provider["Arn"])


@dataclass(frozen=True)
class Stack:
    name: str
    outputs: dict[str, str]

    @property
    def bucket(self) -> str:
        return self.outputs["BucketName"]


def deploy(aws: Aws, **overrides: str) -> Stack:
    """A fresh stack of infra/lake.yaml (own bucket and roles), created through CloudFormation."""
    name = f"lake-{uuid.uuid4().hex[:8]}"
    parameters = {
        "LakePrefix": LAKE_PREFIX,
        "CheckpointPrefix": CHECKPOINT_PREFIX,
        "GitHubRepository": REPOSITORY,
        "CreateGitHubOidcProvider": "false",
        "DatabricksExternalId": EXTERNAL_ID,
        **overrides,
    }
    cloudformation = aws.client("cloudformation")
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(
        StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 10}
    )
    [described] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    return Stack(name, {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]})


@pytest.fixture
def stack(aws: Aws) -> Stack:
    return deploy(aws)


def test_stack_outputs_are_what_the_workflow_and_databricks_need(stack: Stack, aws: Aws) -> None:
    outputs = stack.outputs
    assert outputs["LakeUri"] == f"s3://{stack.bucket}/{LAKE_PREFIX}"
    assert outputs["CheckpointUri"] == f"s3://{stack.bucket}/{CHECKPOINT_PREFIX}"
    assert outputs["AwsRegion"] == REGION
    iam = aws.client("iam")
    assert (
        outputs["IngestRoleArn"]
        == iam.get_role(RoleName=f"{stack.name}-github-ingest")["Role"]["Arn"]
    )
    assert (
        outputs["DatabricksReadRoleArn"]
        == iam.get_role(RoleName=f"{stack.name}-databricks")["Role"]["Arn"]
    )
    aws.client("s3").head_bucket(Bucket=stack.bucket)


def test_bucket_encryption_is_sse_s3_without_a_key(stack: Stack, aws: Aws) -> None:
    rules = aws.client("s3").get_bucket_encryption(Bucket=stack.bucket)[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert [r["ApplyServerSideEncryptionByDefault"] for r in rules] == [{"SSEAlgorithm": "AES256"}]


def test_with_a_kms_key_the_bucket_uses_it_and_both_roles_may(aws: Aws) -> None:
    key = aws.client("kms").create_key(Description="lake")["KeyMetadata"]["Arn"]
    stack = deploy(aws, KmsKeyArn=key)
    [rule] = aws.client("s3").get_bucket_encryption(Bucket=stack.bucket)[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": key,
    }
    # moto's CloudFormation drops BucketKeyEnabled (s3/cloud_formation.py, cfn_to_api_encryption);
    # test_bucket_is_versioned_private_owner_enforced_and_kept checks it in the template.
    use_the_key = {
        "Sid": "UseTheLakeKeyThroughS3",
        "Effect": "Allow",
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Resource": key,
        "Condition": {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}},
    }
    for role in ("github-ingest", "databricks"):
        assert use_the_key in _attached_statements(aws, f"{stack.name}-{role}"), role


def test_without_a_kms_key_no_role_may_use_one(stack: Stack, aws: Aws) -> None:
    for role in ("github-ingest", "databricks"):
        statements = _attached_statements(aws, f"{stack.name}-{role}")
        assert statements
        assert not [s for s in statements if "kms" in json.dumps(s["Action"])], role


def test_only_the_repository_branch_may_assume_the_ingest_role(stack: Stack, aws: Aws) -> None:
    iam = aws.client("iam")
    [provider] = iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]
    role = iam.get_role(RoleName=f"{stack.name}-github-ingest")["Role"]
    assert role["MaxSessionDuration"] == 3 * 3600  # the workflow's timeout
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Federated": provider["Arn"]},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
                    "token.actions.githubusercontent.com:sub": f"repo:{REPOSITORY}:ref:refs/heads/main",
                }
            },
        }
    ]


def test_databricks_role_trusts_unity_catalog_and_itself(stack: Stack, aws: Aws) -> None:
    role = aws.client("iam").get_role(RoleName=f"{stack.name}-databricks")["Role"]
    statements = {s["Sid"]: s for s in role["AssumeRolePolicyDocument"]["Statement"]}
    assert statements["UnityCatalogAssumeRole"] == {
        "Sid": "UnityCatalogAssumeRole",
        "Effect": "Allow",
        "Principal": {"AWS": UNITY_CATALOG_ROLE},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}},
    }
    account = role["Arn"].split(":")[4]
    assert statements["ExplicitSelfRoleAssumption"] == {
        "Sid": "ExplicitSelfRoleAssumption",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": "sts:AssumeRole",
        "Condition": {
            "ArnEquals": {"aws:PrincipalArn": role["Arn"]},
            "StringEquals": {"sts:ExternalId": EXTERNAL_ID},
        },
    }
    assert len(statements) == 2


def _attached_statements(aws: Aws, role_name: str) -> list[dict[str, Any]]:
    iam = aws.client("iam")
    statements = []
    for attached in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]:
        version = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=version)
        statements += document["PolicyVersion"]["Document"]["Statement"]
    return list(statements)


def test_listing_is_limited_to_the_prefixes_each_role_uses(stack: Stack, aws: Aws) -> None:
    """As IAM reports it; moto does not evaluate conditions, so no request can show this."""
    lake = [LAKE_PREFIX, f"{LAKE_PREFIX}/*"]
    for role, prefixes in (
        ("github-ingest", lake),
        ("databricks", [*lake, CHECKPOINT_PREFIX, f"{CHECKPOINT_PREFIX}/*"]),
    ):
        [listing] = [
            s
            for s in _attached_statements(aws, f"{stack.name}-{role}")
            if s["Action"] == "s3:ListBucket"
        ]
        assert listing["Resource"] == f"arn:aws:s3:::{stack.bucket}"
        assert listing["Condition"] == {"StringLikeIfExists": {"s3:prefix": prefixes}}, role


# --- exercised under moto's IAM enforcement ------------------------------------------------------

ALLOWED = "allowed"


def _answer(call: Callable[[], object]) -> str:
    """`allowed`, or the error code S3 refused `call` with."""
    try:
        call()
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    return ALLOWED


def _credentials(assumed: dict[str, Any]) -> dict[str, str]:
    found = assumed["Credentials"]
    return {
        "aws_access_key_id": found["AccessKeyId"],
        "aws_secret_access_key": found["SecretAccessKey"],
        "aws_session_token": found["SessionToken"],
    }


def _environment(aws: Aws, credentials: dict[str, str]) -> dict[str, str]:
    """What the workflow's configure-aws-credentials step leaves behind, plus the moto endpoint."""
    return {
        "FMP_API_KEY": API_KEY,
        "AWS_ENDPOINT_URL": aws.endpoint,
        "AWS_ACCESS_KEY_ID": credentials["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": credentials["aws_secret_access_key"],
        "AWS_SESSION_TOKEN": credentials["aws_session_token"],
    }


def _translate_head_bucket(aws: Aws, stack: Stack, credentials: dict[str, str]) -> None:
    """Give the ingest role moto's name for HeadBucket on the resource its policy grants
    s3:ListBucket on, after showing that moto refuses HeadBucket without it."""
    role = f"{stack.name}-github-ingest"
    [listed] = [
        s["Resource"] for s in _attached_statements(aws, role) if s["Action"] == "s3:ListBucket"
    ]
    s3 = aws.client("s3", **credentials)
    with aws.enforcing_iam():
        refused = _answer(lambda: s3.head_bucket(Bucket=stack.bucket))
    assert refused == "403", "moto authorizes HeadBucket as AWS does now: drop this translation"
    statement = {"Effect": "Allow", "Action": "s3:HeadBucket", "Resource": listed}
    iam = aws.client("iam")
    translation = iam.create_policy(
        PolicyName=f"{role}-moto-head-bucket",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
    )
    iam.attach_role_policy(RoleName=role, PolicyArn=translation["Policy"]["Arn"])


def _ingest_args(url: str, lake: str, tickers: Path) -> list[str]:
    return [
        "ingest", "--fmp-base-url", url, "--lake", lake, "--tickers-path", str(tickers),
        "--datasets", "prices", "--start", "2025-03-03", "--end", "2025-03-14",
        "--rate-limit", "6000",
    ]  # fmt: skip


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@dataclass(frozen=True)
class Landed:
    """A nightly run with the ingest role's credentials, under IAM enforcement."""

    code: int
    output: str
    #: Every key under the lake prefix afterwards, as the ingest role lists them.
    keys: list[str]
    credentials: dict[str, str]


@pytest.fixture
def landed(stack: Stack, aws: Aws, tmp_path: Path) -> Landed:
    # What configure-aws-credentials does with the workflow's OIDC token (moto checks no token).
    credentials = _credentials(
        aws.client("sts").assume_role_with_web_identity(
            RoleArn=stack.outputs["IngestRoleArn"],
            RoleSessionName="nightly-ingest",
            WebIdentityToken="github-oidc-token",
        )
    )
    _translate_head_bucket(aws, stack, credentials)
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT")
    # Two AAPL rows fail the sanity checks, so the run writes a quarantine file too.
    config = SimulatorConfig(api_key=API_KEY, faults={"AAPL": (Fault(kind="bad_rows"),)})
    with SimulatorThread(config) as sim, aws.enforcing_iam():
        code, output = invoke(
            *_ingest_args(sim.url, stack.outputs["LakeUri"], tickers),
            env=_environment(aws, credentials),
        )
        keys = _keys(aws.client("s3", **credentials), stack.bucket, f"{LAKE_PREFIX}/")
    return Landed(code, output, keys, credentials)


def test_ingest_role_lands_a_nightly_run(landed: Landed, template: dict[str, Any]) -> None:
    assert landed.code == ExitCode.OK, landed.output
    raw = [k for k in landed.keys if k.startswith(f"{LAKE_PREFIX}/raw/prices/date=")]
    quarantined = [k for k in landed.keys if k.startswith(f"{LAKE_PREFIX}/quarantine/prices/")]
    manifests = [k for k in landed.keys if k.startswith(f"{LAKE_PREFIX}/_runs/")]
    assert len(raw) == 10  # ten sessions, 3 to 14 March 2025
    assert len(quarantined) == 1
    assert len(manifests) == 1
    assert len(landed.keys) == 12  # nothing else: the access check deleted its probe
    # What expires is exactly what the run quarantined, as the ingester named the keys.
    assert [k for k in landed.keys if k.startswith(_quarantine_expiry(template))] == quarantined


def test_ingest_role_can_change_nothing_outside_the_lake_prefix(
    landed: Landed, stack: Stack, aws: Aws, tmp_path: Path
) -> None:
    assert landed.code == ExitCode.OK, landed.output
    other = f"other-{uuid.uuid4().hex[:8]}"
    aws.client("s3").create_bucket(Bucket=other)
    s3 = aws.client("s3", **landed.credentials)
    bucket, lake_key = stack.bucket, landed.keys[0]

    def put(bucket: str, key: str) -> Callable[[], object]:
        return lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    attempts = {
        "put in the bucket, outside the lake": put(bucket, "elsewhere/x"),
        "put above the lake prefix": put(bucket, "market/x"),
        "put beside the lake prefix": put(bucket, f"{LAKE_PREFIX}-old/x"),
        "put among the checkpoints": put(bucket, f"{CHECKPOINT_PREFIX}/x"),
        "read outside the lake": lambda: s3.get_object(Bucket=bucket, Key="elsewhere/x"),
        "put in another bucket": put(other, lake_key),
        "read another bucket": lambda: s3.get_object(Bucket=other, Key=lake_key),
        "delete the bucket": lambda: s3.delete_bucket(Bucket=bucket),
        "suspend versioning": lambda: s3.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Suspended"}
        ),
        "drop the lifecycle rules": lambda: s3.delete_bucket_lifecycle(Bucket=bucket),
    }
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim, aws.enforcing_iam():
        # Enforcement is on: the test's own keys are unknown to IAM.
        unknown = _answer(lambda: aws.client("s3").list_buckets())
        answers = {what: _answer(call) for what, call in attempts.items()}
        code, output = invoke(
            *_ingest_args(sim.url, f"s3://{bucket}/elsewhere", tickers),
            env=_environment(aws, landed.credentials),
        )
        asked_fmp = len(sim.simulator.requests)
    assert unknown == "InvalidAccessKeyId"
    assert answers == dict.fromkeys(attempts, "AccessDenied")
    # A run pointed outside the lake stops at its access check, before any request to FMP.
    assert code == ExitCode.USAGE, output
    assert "access denied" in output
    assert asked_fmp == 0


def test_databricks_role_reads_the_lake_and_writes_only_checkpoints(
    landed: Landed, stack: Stack, aws: Aws, tmp_path: Path
) -> None:
    assert landed.code == ExitCode.OK, landed.output
    credentials = _credentials(
        aws.client("sts").assume_role(
            RoleArn=stack.outputs["DatabricksReadRoleArn"],
            RoleSessionName="databricks",
            ExternalId=EXTERNAL_ID,
        )
    )
    s3 = aws.client("s3", **credentials)
    bucket, lake_key = stack.bucket, landed.keys[0]
    checkpoint = f"{CHECKPOINT_PREFIX}/stock_pipeline/prod/bronze/offsets/0"

    def put(key: str) -> Callable[[], object]:
        return lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"{}")

    allowed = {
        "read a lake file": lambda: s3.get_object(Bucket=bucket, Key=lake_key),
        "write a checkpoint": put(checkpoint),
        "read a checkpoint": lambda: s3.get_object(Bucket=bucket, Key=checkpoint),
        "delete a checkpoint": lambda: s3.delete_object(Bucket=bucket, Key=checkpoint),
    }
    refused = {
        "overwrite a lake file": put(lake_key),
        "write a run manifest": put(f"{LAKE_PREFIX}/_runs/forged.json"),
        "delete a lake file": lambda: s3.delete_object(Bucket=bucket, Key=lake_key),
        "write outside both": put("elsewhere/x"),
        "read outside both": lambda: s3.get_object(Bucket=bucket, Key="elsewhere/x"),
    }
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT")
    with aws.enforcing_iam():
        code, output = invoke(
            "status", "--lake", stack.outputs["LakeUri"], "--tickers-path", str(tickers),
            "--as-of", "2025-03-15T12:00:00+00:00", "--reasons", "--format", "json",
            env=_environment(aws, credentials),
        )  # fmt: skip
        listed = _keys(s3, bucket, f"{LAKE_PREFIX}/")
        answers = {what: _answer(call) for what, call in (allowed | refused).items()}
    assert answers == dict.fromkeys(allowed, ALLOWED) | dict.fromkeys(refused, "AccessDenied")
    assert listed == landed.keys
    # `status` read the manifests and the quarantine files (--reasons) with the role's credentials.
    assert code == ExitCode.OK, output  # fresh on 15 March 2025: prices reach the 14th
    report = json.loads(output)
    assert report["lake"] == stack.outputs["LakeUri"]
    assert len(report["runs"]) == 1
    assert report["quarantined"] == {"prices": 2}
    assert {"low above open or close", "negative volume"} <= set(
        report["quarantine_reasons"]["prices"]
    )
