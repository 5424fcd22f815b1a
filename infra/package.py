"""Package one stage into a deployable SAM template: `chalice package` with infra/resources.json
merged in, then the template's `Stage` parameter pinned to the stage packaged.

Why the pin: Chalice writes stage values into the template (the worker's event source names
the stage's queue, from CERTS_QUEUE_NAME), while the merged resources are named from the
`Stage` parameter. A dev package deployed with Stage=prod would wire a prod stack to dev names,
so the package for a stage accepts that stage only, and needs no parameter to deploy.

    python infra/package.py --stage dev --out build/dev [--deployable]

Every packaging first checks each function's settings as the stage sets them, with the check
the service runs when it starts (settings.development_defaults): a stage outside local and the
tests that still runs on a development default (HS256 secret, sandbox keys, local secrets key,
issuer keys that are not from a secret store) is refused, each variable named.
`--deployable` (what `make deploy` uses) also refuses a stage whose configuration still holds
a REPLACE-ME placeholder.

What depends on the stage's configuration is written here, not in the merge template: the
grants on the keys it names, each function's reserved concurrency, and encryption at rest under
the stage's KMS key (or, without one, the scanner's checks that only such a key passes skipped
with their reason). docs/DEPLOY.md, "Concurrency", "Security scan", "Encryption at rest".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the service's settings live in chalicelib
    sys.path.insert(0, str(ROOT))

from pydantic import ValidationError  # noqa: E402

from chalicelib.settings import Settings, development_defaults  # noqa: E402

MERGE_TEMPLATE = ROOT / "infra" / "resources.json"
CONFIG = ROOT / ".chalice" / "config.json"
PLACEHOLDER = "REPLACE-ME"


class PackagingError(Exception):
    pass


def stage_config(stage: str) -> dict[str, Any]:
    stages = json.loads(CONFIG.read_text())["stages"]
    if stage not in stages:
        raise PackagingError(f"no stage {stage!r} in {CONFIG} (stages: {', '.join(stages)})")
    return stages[stage]


def placeholders(stage: str) -> list[str]:
    """Where the stage's configuration still says REPLACE-ME, as `function: VARIABLE` lines."""
    config = stage_config(stage)
    found = [
        f"stage: {name}"
        for name, value in config.get("environment_variables", {}).items()
        if PLACEHOLDER in str(value)
    ]
    for function, settings in config.get("lambda_functions", {}).items():
        found += [
            f"{function}: {name}"
            for name, value in settings.get("environment_variables", {}).items()
            if PLACEHOLDER in str(value)
        ]
    return found


class StageSettings(Settings):
    """The settings a stage's configuration gives, and nothing from this shell's environment."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):
        return (init_settings,)


def unsafe_settings(stage: str) -> list[str]:
    """What the service's start-up check would refuse in each function of the stage."""
    config = stage_config(stage)
    per_function: dict[str, list[str]] = {}
    for function, overrides in config.get("lambda_functions", {}).items():
        found = per_function.setdefault(function, [])
        variables = {
            **config.get("environment_variables", {}),
            **overrides.get("environment_variables", {}),
        }
        values = {
            name.removeprefix("CERTS_").lower(): value
            for name, value in variables.items()
            if name.startswith("CERTS_")
        }
        try:
            settings = StageSettings(**values)
        except ValidationError as exc:
            errors = "; ".join(e["msg"] for e in exc.errors())
            found.append(f"invalid settings: {errors}")
            continue
        found += development_defaults(settings)
    # What every function has is said once; what only some have names them.
    everywhere = [
        f
        for f in next(iter(per_function.values()), [])
        if all(f in others for others in per_function.values())
    ]
    return everywhere + [
        f"{function}: {finding}"
        for function, found in per_function.items()
        for finding in found
        if finding not in everywhere
    ]


# Chalice's function names in the template, and what each does with keys in custody: the worker
# signs (owners' seeds under KMS, new slice secrets sealed, the issuers' keys read); the
# reconciler and the API (an operator's reconcile) only open sealed slice secrets.
SIGNING_FUNCTIONS = {"worker": "Worker"}
OPENING_FUNCTIONS = {"reconciler": "Reconciler", "api_handler": "APIHandler"}


def function_variables(stage: str, function: str) -> dict[str, str]:
    config = stage_config(stage)
    return {
        **config.get("environment_variables", {}),
        **config["lambda_functions"].get(function, {}).get("environment_variables", {}),
    }


def custody_statements(variables: dict[str, str], signs: bool) -> list[dict[str, Any]]:
    """The grants for the keys a function's configuration names: none when nothing is named."""
    found: list[dict[str, Any]] = []
    key = variables.get("CERTS_SECRETS_KMS_KEY_ID")
    if key:
        found.append(
            {
                "Sid": "KeysInCustody",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"] if signs else ["kms:Decrypt"],
                "Resource": [key],
            }
        )
        if not signs:
            # Slice secrets carry no encryption context, owners' seeds always do: this
            # function can open the first and never an owner's seed.
            found[-1]["Condition"] = {"Null": {"kms:EncryptionContextKeys": "true"}}
    secret = variables.get("CERTS_REGISTRY_ISSUER_KEYS_SECRET")
    if secret and signs:
        action = (
            "secretsmanager:GetSecretValue"
            if ":secretsmanager:" in secret
            else ("ssm:GetParameter")
        )
        found.append(
            {"Sid": "IssuerKeys", "Effect": "Allow", "Action": [action], "Resource": [secret]}
        )
    return found


def grant_custody(stage: str, template: dict[str, Any]) -> None:
    """Add to each function's role exactly the custody grants its configuration needs."""
    for functions, signs in ((SIGNING_FUNCTIONS, True), (OPENING_FUNCTIONS, False)):
        for function, logical_id in functions.items():
            granted = custody_statements(function_variables(stage, function), signs)
            if not granted:
                continue
            role = template["Resources"][logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]
            template["Resources"][role]["Properties"]["Policies"].append(
                {
                    "PolicyName": "KeysInCustody",
                    "PolicyDocument": {"Version": "2012-10-17", "Statement": granted},
                }
            )


# Lambda functions' concurrency, when the stage's .chalice/config.json sets none (Chalice's own
# `reserved_concurrency`, per function of a stage, overrides it). The worker's is also the cap on
# the registry's load: at most that many commands are being sent at once, whatever the backlog;
# its SQS event source scales to exactly that many (MaximumConcurrency), so no receive is lost to
# throttling (a throttled receive would still count towards the dead-letter queue). The
# reconciler's default is its shards plus the schedule's own invocation, so every shard's pass
# of a minute runs at once, as without a limit.
DEFAULT_RESERVED_CONCURRENCY = {"APIHandler": 100, "Worker": 20}
# The checks that only a customer-managed KMS key satisfies, per resource type. A stage whose
# configuration names a key (CERTS_SECRETS_KMS_KEY_ID) encrypts these under it; a stage without
# one skips them with this reason, so the scan stays clean and the exception stays visible.
NEEDS_STAGE_KEY = {"AWS::DynamoDB::Table": "CKV_AWS_119", "AWS::Logs::LogGroup": "CKV_AWS_158"}
NO_STAGE_KEY = (
    "stage {stage} configures no customer KMS key (CERTS_SECRETS_KMS_KEY_ID): it holds no real "
    "certificates (dev registry simulator), so AWS-owned encryption at rest; a stage that sets "
    "one is encrypted under it (infra/package.py, encrypt_at_rest)"
)
# The AWS services that use the stage's key for the functions' data at rest on their behalf.
AT_REST_SERVICES = ("dynamodb", "sqs")


def stage_settings(stage: str, function: str) -> Settings:
    values = {
        name.removeprefix("CERTS_").lower(): value
        for name, value in function_variables(stage, function).items()
        if name.startswith("CERTS_")
    }
    return StageSettings(**values)


def limit_concurrency(stage: str, template: dict[str, Any]) -> None:
    """Give every function a reserved concurrency, and the worker's event source the same."""
    resources = template["Resources"]
    shards = stage_settings(stage, "reconciler").open_command_shards
    defaults = {**DEFAULT_RESERVED_CONCURRENCY, "Reconciler": shards + 1}
    for logical_id, default in defaults.items():
        resources[logical_id]["Properties"].setdefault("ReservedConcurrentExecutions", default)
    workers = resources["Worker"]["Properties"]["ReservedConcurrentExecutions"]
    if not 2 <= workers <= 1000:  # what an SQS event source's maximum concurrency allows
        raise PackagingError(f"the worker's reserved_concurrency must be 2-1000, not {workers}")
    for event in resources["Worker"]["Properties"]["Events"].values():
        if event["Type"] == "SQS":
            event["Properties"]["ScalingConfig"] = {"MaximumConcurrency": workers}


def skip_check(resource: dict[str, Any], check: str, reason: str) -> None:
    skips = resource.setdefault("Metadata", {}).setdefault("checkov", {}).setdefault("skip", [])
    skips.append({"id": check, "comment": reason})


def encrypt_at_rest(stage: str, template: dict[str, Any]) -> None:
    """The table, the log groups and the queues under the stage's KMS key, when it names one,
    with each function's role allowed to use the key through DynamoDB and SQS only (never
    directly: the custody grants stay what decides who opens owners' seeds)."""
    key = stage_config(stage).get("environment_variables", {}).get("CERTS_SECRETS_KMS_KEY_ID")
    resources = template["Resources"]
    for resource in resources.values():
        kind = resource["Type"]
        if not key:
            if kind in NEEDS_STAGE_KEY:
                skip_check(resource, NEEDS_STAGE_KEY[kind], NO_STAGE_KEY.format(stage=stage))
            continue
        props = resource["Properties"]
        if kind == "AWS::DynamoDB::Table":
            props["SSESpecification"] = {
                "SSEEnabled": True,
                "SSEType": "KMS",
                "KMSMasterKeyId": key,
            }
        elif kind == "AWS::Logs::LogGroup":
            props["KmsKeyId"] = key
        elif kind == "AWS::SQS::Queue":
            props["KmsMasterKeyId"] = key
    if not key:
        return
    services = [f"{service}.${{AWS::Region}}.amazonaws.com" for service in AT_REST_SERVICES]
    for logical_id in (*SIGNING_FUNCTIONS.values(), *OPENING_FUNCTIONS.values()):
        role = resources[logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]
        resources[role]["Properties"]["Policies"].append(
            {
                "PolicyName": "KeyAtRest",
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "KeyAtRest",
                            "Effect": "Allow",
                            "Action": [
                                "kms:Decrypt",
                                "kms:DescribeKey",
                                "kms:Encrypt",
                                "kms:GenerateDataKey",
                            ],
                            "Resource": [key],
                            "Condition": {
                                "StringEquals": {
                                    "kms:ViaService": [{"Fn::Sub": s} for s in services]
                                }
                            },
                        }
                    ],
                },
            }
        )


def package(stage: str, out: Path) -> Path:
    """Write out/sam.json, deployment.zip and layer-deployment.zip; returns the template's path."""
    stage_config(stage)
    if stage not in json.loads(MERGE_TEMPLATE.read_text())["Mappings"]["StageSettings"]:
        raise PackagingError(f"stage {stage!r} has no StageSettings in {MERGE_TEMPLATE}")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Chalice wants a region to build in; the template itself names none (AWS::Region).
    env.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    chalice = Path(sys.executable).parent / "chalice"
    result = subprocess.run(
        [
            str(chalice),
            "--project-dir",
            str(ROOT),
            "package",
            "--stage",
            stage,
            "--merge-template",
            str(MERGE_TEMPLATE),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise PackagingError(f"chalice package failed:\n{result.stdout}{result.stderr}")
    template_path = out / "sam.json"
    template = json.loads(template_path.read_text())
    parameter = template["Parameters"]["Stage"]
    parameter["AllowedValues"] = [stage]
    parameter["Default"] = stage
    grant_custody(stage, template)
    limit_concurrency(stage, template)
    encrypt_at_rest(stage, template)
    template_path.write_text(json.dumps(template, indent=2) + "\n")
    return template_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--deployable", action="store_true", help="refuse REPLACE-ME placeholders in the stage"
    )
    args = parser.parse_args(argv)
    out = args.out or ROOT / "build" / args.stage
    try:
        if found := unsafe_settings(args.stage):
            raise PackagingError(
                f"stage {args.stage!r} refuses to build: development defaults are in effect in "
                ".chalice/config.json; set instead (docs/DEPLOY.md):\n  " + "\n  ".join(found)
            )
        if args.deployable and (found := placeholders(args.stage)):
            raise PackagingError(
                f"stage {args.stage!r} still has placeholders in .chalice/config.json; "
                "set them first (docs/DEPLOY.md):\n  " + "\n  ".join(found)
            )
        path = package(args.stage, out)
    except PackagingError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
