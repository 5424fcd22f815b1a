"""The deployable template, read as AWS would get it: `infra/package.py` (what `make package`
runs) packages every stage once per test session, and these tests read the result.

Packaging runs `chalice package`. The dependencies go into a Lambda layer that Chalice caches in
.chalice/deployments by the hash of requirements.txt: building it needs PyPI (Linux wheels) and
takes ~25 s, once per change of requirements; after that a stage packages in ~2 s, offline.
Under pytest-xdist the workers share one packaging run behind a file lock.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import app
from chalicelib import observability
from chalicelib.settings import Settings
from devstack import resources

ROOT = Path(__file__).resolve().parent.parent
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())
STAGES = sorted(CONFIG["stages"])
FUNCTIONS = {"APIHandler": "api_handler", "Worker": "worker", "Reconciler": "reconciler"}
# What Lambda's SQS event source mapping calls with the worker's role.
EVENT_SOURCE_MAPPING_SQS = {
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
}
API_GATEWAY_INTEGRATION_LIMIT_S = 29
SQS_DEDUPLICATION_WINDOW_S = 300


def _load_packager():
    spec = importlib.util.spec_from_file_location("infra_package", ROOT / "infra" / "package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


packager = _load_packager()


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The packaged template of every stage, built once for all xdist workers."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(shared / "infra-package.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = {}
        for stage in STAGES:
            out = shared / "infra-package" / stage
            if not (out / "sam.json").exists():
                # A subprocess, as `make package` runs it: Chalice puts the stage's environment
                # into os.environ while it imports app.py, which must not leak into other tests.
                command = [sys.executable, str(ROOT / "infra" / "package.py"), "--stage", stage]
                result = subprocess.run(
                    [*command, "--out", str(out)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert result.returncode == 0, f"packaging {stage} failed:\n{result.stderr}"
            built[stage] = json.loads((out / "sam.json").read_text())
    return built


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def resolve(value: Any, stage: str) -> Any:
    """A string as CloudFormation would make it, for the substitutions this template uses."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        return (
            value["Fn::Sub"]
            .replace("${Stage}", stage)
            .replace("${AWS::Partition}", "aws")
            .replace("${AWS::Region}", "eu-west-1")
            .replace("${AWS::AccountId}", "123456789012")
        )
    return value


def queue_arn(template: dict[str, Any], logical_id: str, stage: str) -> str:
    name = resolve(template["Resources"][logical_id]["Properties"]["QueueName"], stage)
    return f"arn:aws:sqs:eu-west-1:123456789012:{name}"


def logical_target(arn: Any) -> str:
    """The resource an intrinsic ARN points at ({"Fn::GetAtt": [X, "Arn"]} -> X)."""
    assert isinstance(arn, dict) and "Fn::GetAtt" in arn, f"not a reference: {arn}"
    return arn["Fn::GetAtt"][0]


def statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for policy in policies for s in policy["PolicyDocument"]["Statement"]]


def actions_of(template: dict[str, Any], function: str, service: str) -> set[str]:
    role = template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    return {
        action
        for statement in statements(template, role)
        for action in statement["Action"]
        if action.startswith(f"{service}:")
    }


def calls_in(path: str, *patterns: str) -> set[str]:
    """Client operations the code calls, as IAM action names (get_item -> GetItem)."""
    source = (ROOT / path).read_text()
    found = {name for pattern in patterns for name in re.findall(pattern, source)}
    return {"".join(part.capitalize() for part in name.split("_")) for name in found}


def stage_key(stage: str) -> str | None:
    """The stage's KMS key, when its configuration names one."""
    return CONFIG["stages"][stage]["environment_variables"].get("CERTS_SECRETS_KMS_KEY_ID")


def stage_environment(template: dict[str, Any], function: str) -> dict[str, str]:
    """The function's environment with the template's references stood in for by values."""
    variables = template["Resources"][function]["Properties"]["Environment"]["Variables"]
    return {k: v if isinstance(v, str) else f"resolved-at-deploy-{k}" for k, v in variables.items()}


# --- queues ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_every_queue_is_fifo_and_ends_in_a_fifo_dead_letter_queue(templates, stage):
    template = templates[stage]
    queues = resources_of(template, "AWS::SQS::Queue")
    assert queues, "the template has no queues"
    dead_letter_queues = {
        logical_target(q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    for name, queue in queues.items():
        props = queue["Properties"]
        assert props["FifoQueue"] is True, name
        assert resolve(props["QueueName"], stage).endswith(".fifo"), name
        if name not in dead_letter_queues:
            target = logical_target(props["RedrivePolicy"]["deadLetterTargetArn"])
            assert queues[target]["Properties"]["FifoQueue"] is True


@pytest.mark.parametrize("stage", STAGES)
def test_the_command_queue_runs_in_high_throughput_mode(templates, stage):
    props = templates[stage]["Resources"]["CommandQueue"]["Properties"]
    assert props["DeduplicationScope"] == "messageGroup"
    assert props["FifoThroughputLimit"] == "perMessageGroupId"


@pytest.mark.parametrize("stage", STAGES)
def test_a_message_goes_to_the_dead_letter_queue_after_the_receives_the_worker_counts(
    templates, stage
):
    props = templates[stage]["Resources"]["CommandQueue"]["Properties"]
    assert props["RedrivePolicy"]["maxReceiveCount"] == app.MAX_RECEIVES


# --- the worker and the reconciler -------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_the_worker_reports_partial_batch_failures_from_the_command_queue(templates, stage):
    template = templates[stage]
    [source] = template["Resources"]["Worker"]["Properties"]["Events"].values()
    assert source["Type"] == "SQS"
    props = source["Properties"]
    # Without it Lambda deletes the whole batch, failed records too (see STACK-NOTES.md).
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BatchSize"] <= 10  # FIFO's limit
    # Chalice names the queue from CERTS_QUEUE_NAME at package time: it must be ours.
    assert resolve(props["Queue"], stage) == queue_arn(template, "CommandQueue", stage)
    assert CONFIG["stages"][stage]["environment_variables"]["CERTS_QUEUE_NAME"] == resolve(
        template["Resources"]["CommandQueue"]["Properties"]["QueueName"], stage
    )


@pytest.mark.parametrize("stage", STAGES)
def test_the_reconciler_runs_every_minute(templates, stage):
    [event] = templates[stage]["Resources"]["Reconciler"]["Properties"]["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == "rate(1 minute)"


@pytest.mark.parametrize("stage", STAGES)
def test_the_reconciler_fans_out_to_its_shards_by_invoking_itself_only(templates, stage):
    template = templates[stage]
    role = template["Resources"]["Reconciler"]["Properties"]["Role"]["Fn::GetAtt"][0]
    [fan_out] = [s for s in statements(template, role) if "lambda:InvokeFunction" in s["Action"]]
    assert fan_out["Action"] == ["lambda:InvokeFunction"]
    [target] = fan_out["Resource"]
    assert target["Fn::Sub"].endswith(":function:certificates-domain-${Stage}-reconciler")
    for function in ("APIHandler", "Worker"):
        other = template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
        assert not [
            s for s in statements(template, other) if "lambda:InvokeFunction" in s["Action"]
        ]
    variables = template["Resources"]["Reconciler"]["Properties"]["Environment"]["Variables"]
    assert variables["CERTS_RECONCILER_FAN_OUT"] == "true"
    # Every function computes the same shards: the API writes the index keys the reconciler reads.
    shards = {
        (v.get("CERTS_OPEN_COMMAND_SHARDS"), v.get("CERTS_EXPIRY_SHARDS"))
        for v in (
            template["Resources"][f]["Properties"]["Environment"]["Variables"] for f in FUNCTIONS
        )
    }
    assert len(shards) == 1 and None not in next(iter(shards))


@pytest.mark.parametrize("stage", STAGES)
def test_functions_find_the_book_and_the_queue_through_the_template(templates, stage):
    for function in FUNCTIONS:
        variables = templates[stage]["Resources"][function]["Properties"]["Environment"][
            "Variables"
        ]
        assert variables["CERTS_TABLE_NAME"] == {"Ref": "CertificateBook"}
        assert variables["CERTS_QUEUE_URL"] == {"Ref": "CommandQueue"}
        assert variables["CERTS_REGION"] == {"Ref": "AWS::Region"}
        assert variables["CERTS_STAGE"] == stage


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_package_deploys_as_that_stage_only(templates, stage):
    parameter = templates[stage]["Parameters"]["Stage"]
    assert parameter["AllowedValues"] == [stage]
    assert parameter["Default"] == stage
    assert stage in templates[stage]["Mappings"]["StageSettings"]


# --- timeouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_timeouts_are_ordered_registry_call_lambda_lease_and_visibility(
    templates, stage, monkeypatch
):
    template = templates[stage]
    settings = {}
    for function in FUNCTIONS:
        timeout = template["Resources"][function]["Properties"]["Timeout"]
        for name in [k for k in os.environ if k.startswith("CERTS_")]:
            monkeypatch.delenv(name)
        for name, value in stage_environment(template, function).items():
            monkeypatch.setenv(name, value)
        settings[function] = Settings()  # validates registry call < Lambda timeout < lease
        assert settings[function].lambda_timeout_s == timeout, f"{function}: CERTS_LAMBDA_TIMEOUT_S"
        assert settings[function].registry_timeout_s < timeout < settings[function].lease_s
    assert template["Resources"]["APIHandler"]["Properties"]["Timeout"] < (
        API_GATEWAY_INTEGRATION_LIMIT_S
    )
    worker_timeout = template["Resources"]["Worker"]["Properties"]["Timeout"]
    visibility = template["Resources"]["CommandQueue"]["Properties"]["VisibilityTimeout"]
    assert 6 * worker_timeout <= visibility <= 7 * worker_timeout
    # A message handed back stays invisible this long; only after that is its command's message
    # lost, so the reconciler must not re-drive it sooner (a second copy in the same group).
    assert settings["Reconciler"].redrive_after_s > visibility
    # and past SQS's deduplication window, or the re-drive is dropped as a duplicate
    assert settings["Reconciler"].redrive_after_s > SQS_DEDUPLICATION_WINDOW_S


# --- IAM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_iam_statements_on_the_book_and_queues_name_their_resources(templates, stage):
    template = templates[stage]
    roles = resources_of(template, "AWS::IAM::Role")
    assert roles
    for role in roles:
        for statement in statements(template, role):
            actions = statement["Action"]
            assert all("*" not in action for action in actions), (role, actions)
            if not any(a.startswith(("dynamodb:", "sqs:")) for a in actions):
                continue
            for resource in statement["Resource"]:
                assert isinstance(resource, dict), f"{role}: literal resource {resource!r}"
                text = json.dumps(resource)
                assert "*" not in text, f"{role}: wildcard in {text}"
                referenced = re.findall(r'"Fn::GetAtt": \["(\w+)"|\$\{(\w+)\.Arn\}', text)
                assert referenced, f"{role}: {text} names no resource of the template"
                for names in referenced:
                    assert "".join(names) in template["Resources"], text


@pytest.mark.parametrize("stage", STAGES)
def test_each_function_has_its_own_role(templates, stage):
    roles = [
        templates[stage]["Resources"][f]["Properties"]["Role"]["Fn::GetAtt"][0] for f in FUNCTIONS
    ]
    assert len(set(roles)) == len(FUNCTIONS)


@pytest.mark.parametrize("stage", STAGES)
def test_each_role_allows_exactly_the_calls_its_function_makes(templates, stage):
    template = templates[stage]
    book = calls_in("chalicelib/adapters/dynamo.py", r'_call\(\s*"(\w+)"', r"self\._db\.(\w+)\(")
    health_dynamodb = calls_in("chalicelib/composition.py", r"dynamodb\.(\w+)\(")
    health_sqs = calls_in("chalicelib/composition.py", r"\bsqs\.(\w+)\(")
    # SQS authorizes a batch request by its single action's permission (there is no
    # sqs:ChangeMessageVisibilityBatch action to grant).
    queue_calls = {
        c.removesuffix("Batch")
        for c in calls_in("chalicelib/adapters/sqs.py", r"self\._sqs\.(\w+)\(")
    }
    # Postponing a received message is the worker's alone, and its event source needs it too.
    sends = queue_calls - {"ChangeMessageVisibility"}
    assert {"GetItem", "PutItem", "Query"} <= book and sends == {"SendMessage"}
    assert queue_calls - sends <= {a.removeprefix("sqs:") for a in EVENT_SOURCE_MAPPING_SQS}

    def dynamodb(names: set[str]) -> set[str]:
        return {f"dynamodb:{n}" for n in names}

    def sqs(names: set[str]) -> set[str]:
        return {f"sqs:{n}" for n in names}

    assert actions_of(template, "APIHandler", "dynamodb") == dynamodb(book | health_dynamodb)
    assert actions_of(template, "APIHandler", "sqs") == sqs(sends | health_sqs)
    assert actions_of(template, "Worker", "dynamodb") == dynamodb(book)
    # and it queues what a committed command leads to (a withdrawal's unclaims)
    assert actions_of(template, "Worker", "sqs") == EVENT_SOURCE_MAPPING_SQS | sqs(sends)
    assert actions_of(template, "Reconciler", "dynamodb") == dynamodb(book)
    assert actions_of(template, "Reconciler", "sqs") == sqs(sends)


@pytest.mark.parametrize("stage", STAGES)
def test_roles_reach_the_book_and_exactly_its_indexes(templates, stage):
    template = templates[stage]
    indexes = {
        i["IndexName"]
        for i in template["Resources"]["CertificateBook"]["Properties"]["GlobalSecondaryIndexes"]
        if "Fn::If" not in i  # an index kept only for an upgrade (by_change): nothing reads it
    }
    for function in FUNCTIONS:
        role = template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
        [book] = [s for s in statements(template, role) if "dynamodb:Query" in s["Action"]]
        assert {"Fn::GetAtt": ["CertificateBook", "Arn"]} in book["Resource"]
        reached = {
            r["Fn::Sub"].removeprefix("${CertificateBook.Arn}/index/")
            for r in book["Resource"]
            if "Fn::Sub" in r
        }
        assert reached == indexes, function


@pytest.mark.parametrize("stage", STAGES)
def test_the_old_feed_index_is_kept_only_when_an_upgrade_asks(templates, stage):
    """docs/DEPLOY.md, Upgrading: `by_change` (whole items) stays only under KeepByChangeIndex
    (default false), beside `changes` (keys only, on the same keys), so that the upgrade of a
    stack that has it creates one index per deploy and a new stack has `changes` alone."""
    template = templates[stage]
    assert template["Parameters"]["KeepByChangeIndex"]["Default"] == "false"
    assert template["Conditions"]["KeepByChangeIndex"] == {
        "Fn::Equals": [{"Ref": "KeepByChangeIndex"}, "true"]
    }
    gsis = template["Resources"]["CertificateBook"]["Properties"]["GlobalSecondaryIndexes"]
    [changes] = [i for i in gsis if i.get("IndexName") == "changes"]
    [kept] = [i["Fn::If"] for i in gsis if "Fn::If" in i]
    condition, old, otherwise = kept
    assert condition == "KeepByChangeIndex" and otherwise == {"Ref": "AWS::NoValue"}
    assert old["IndexName"] == "by_change" and old["KeySchema"] == changes["KeySchema"]
    assert changes["Projection"] == {"ProjectionType": "KEYS_ONLY"}


# --- logs and alarms ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_each_function_logs_to_its_own_group_with_a_retention(templates, stage):
    template = templates[stage]
    for function in FUNCTIONS:
        logging_config = template["Resources"][function]["Properties"]["LoggingConfig"]
        group = logging_config["LogGroup"]["Ref"]
        assert template["Resources"][group]["Type"] == "AWS::Logs::LogGroup"
        retention = template["Resources"][group]["Properties"]["RetentionInDays"]
        assert retention == {
            "Fn::FindInMap": ["StageSettings", {"Ref": "Stage"}, "LogRetentionDays"]
        }
        role = template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
        writes = [s for s in statements(template, role) if "logs:PutLogEvents" in s["Action"]]
        assert writes == [
            {
                "Sid": "OwnLogGroup",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [{"Fn::GetAtt": [group, "Arn"]}],
            }
        ]
    for days in template["Mappings"]["StageSettings"].values():
        assert days["LogRetentionDays"] > 0


def alarms_on(template: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    found = []
    for alarm in resources_of(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        names = [props.get("MetricName")] + [
            m["MetricStat"]["Metric"]["MetricName"]
            for m in props.get("Metrics", [])
            if "MetricStat" in m
        ]
        if metric in names:
            found.append(props)
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_an_alarm_fires_when_a_message_reaches_the_dead_letter_queue(templates, stage):
    [alarm] = [
        a
        for a in alarms_on(templates[stage], "ApproximateNumberOfMessagesVisible")
        if a["Dimensions"]
        == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["CommandDeadLetterQueue", "QueueName"]}}]
    ]
    assert alarm["Namespace"] == "AWS/SQS"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


@pytest.mark.parametrize("stage", STAGES)
def test_an_alarm_fires_on_in_doubt_commands_from_the_reconcilers_metrics(templates, stage):
    reconcile_source = (ROOT / "chalicelib" / "usecases" / "reconcile.py").read_text()
    [alarm] = alarms_on(templates[stage], "in_doubt_for_operator")
    watched = [m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m]
    assert {m["MetricName"] for m in watched} == {
        "in_doubt_for_operator",
        "lease_expired_in_doubt",
        "unsettled_for_operator",  # a command the reconciler failed to settle a few passes
    }
    for metric in watched:
        # The names are the reconciler's action counts, published by observability.metrics.
        assert f'"{metric["MetricName"]}"' in reconcile_source
        assert metric["Namespace"] == observability.NAMESPACE
        assert metric["Dimensions"] == [{"Name": "Stage", "Value": {"Ref": "Stage"}}]
    [expression] = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert "FILL" in expression["Expression"]  # no data in a period means no in-doubt command
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Threshold"] == 1


@pytest.mark.parametrize("stage", STAGES)
def test_an_alarm_and_the_dashboard_show_a_stranded_allocation(templates, stage):
    worker_source = (ROOT / "chalicelib" / "usecases" / "process.py").read_text()
    assert '"stranded_allocations"' in worker_source  # the name the worker publishes
    [alarm] = alarms_on(templates[stage], "stranded_allocations")
    assert alarm["Namespace"] == observability.NAMESPACE
    assert alarm["Dimensions"] == [{"Name": "Stage", "Value": {"Ref": "Stage"}}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    body = templates[stage]["Resources"]["OperationsDashboard"]["Properties"]["DashboardBody"]
    assert '\\"stranded_allocations\\"' in json.dumps(body)


@pytest.mark.parametrize("stage", STAGES)
def test_alarms_watch_queue_age_reconciler_failures_and_api_5xx(templates, stage):
    template = templates[stage]
    [age] = alarms_on(template, "ApproximateAgeOfOldestMessage")
    assert age["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["CommandQueue", "QueueName"]}
    [errors] = alarms_on(template, "Errors")
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "Reconciler"}}]
    [api] = alarms_on(template, "5XXError")
    title = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["info"]["title"]
    assert api["Dimensions"] == [{"Name": "ApiName", "Value": title}]  # the API's own name
    assert resolve(title, stage) == f"certificates-domain-{stage}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_alarm_tells_the_operators_topic(templates, stage):
    template = templates[stage]
    for name, alarm in resources_of(template, "AWS::CloudWatch::Alarm").items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "OperatorAlarms"}], name
    assert template["Resources"]["OperatorAlarms"]["Type"] == "AWS::SNS::Topic"


# --- the book ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_the_deployed_table_is_the_one_the_embedded_stack_creates(templates, stage):
    book = templates[stage]["Resources"]["CertificateBook"]
    assert resources.table_definition(templates[stage]["Resources"]) == (
        resources.table_definition()
    )
    props = book["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    key = stage_key(stage)
    assert props["SSESpecification"] == (
        {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": key}
        if key
        else {"SSEEnabled": True}
    )
    assert props["DeletionProtectionEnabled"] is True
    assert book["DeletionPolicy"] == "Retain"
    assert resolve(props["TableName"], stage) == f"certificates-domain-{stage}-book"


# --- configuration -----------------------------------------------------------------------------


def test_a_deployable_package_refuses_placeholders(tmp_path, capsys):
    assert packager.placeholders("dev")  # until someone fills in .chalice/config.json
    out = tmp_path / "dev"
    assert packager.main(["--stage", "dev", "--out", str(out), "--deployable"]) == 1
    assert "CERTS_OIDC_ISSUER" in capsys.readouterr().err
    assert not out.exists()


def test_every_stage_configures_every_function():
    for stage, config in CONFIG["stages"].items():
        assert config["environment_variables"]["CERTS_STAGE"] == stage
        assert set(config["lambda_functions"]) == set(FUNCTIONS.values()), stage
        for function in config["lambda_functions"].values():
            policy = ROOT / ".chalice" / function["iam_policy_file"]
            assert policy.exists(), policy
    assert CONFIG["autogen_policy"] is False


def test_in_lambda_structured_lines_reach_stdout_as_pure_json(capsys):
    before = (
        list(observability.log.handlers),
        observability.log.level,
        observability.log.propagate,
    )
    try:
        app.log_structured_lines_to_stdout()
        observability.metrics({"in_doubt_for_operator": 2})
    finally:
        observability.log.handlers[:] = before[0]
        observability.log.setLevel(before[1])
        observability.log.propagate = before[2]
    [line] = capsys.readouterr().out.splitlines()
    document = json.loads(line)  # CloudWatch extracts metrics only from a pure JSON line
    assert document["in_doubt_for_operator"] == 2
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == observability.NAMESPACE
    assert logging.getLogger().level >= logging.NOTSET  # the root logger was left alone


# --- keys in custody ---------------------------------------------------------------------------


def custody_grants(template: dict[str, Any], function: str) -> list[dict[str, Any]]:
    role = template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    return [
        s
        for s in statements(template, role)
        if any(a.startswith(("kms:", "secretsmanager:", "ssm:")) for a in s["Action"])
        and s.get("Sid") != "KeyAtRest"  # the key through DynamoDB and SQS only: see below
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_only_configured_keys_are_granted_and_only_the_worker_signs(templates, stage):
    template = templates[stage]
    variables = CONFIG["stages"][stage]["environment_variables"]
    key = variables.get("CERTS_SECRETS_KMS_KEY_ID")
    secret = variables.get("CERTS_REGISTRY_ISSUER_KEYS_SECRET")
    if not key:
        assert secret is None
        for function in FUNCTIONS:
            assert custody_grants(template, function) == [], function
        return
    assert custody_grants(template, "Worker") == [
        {
            "Sid": "KeysInCustody",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [key],
        },
        {
            "Sid": "IssuerKeys",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": [secret],
        },
    ]
    # The reconciler and the API open sealed slice secrets (no encryption context), never an
    # owner's seed (always one) nor the issuers' keys.
    for function in ("Reconciler", "APIHandler"):
        assert custody_grants(template, function) == [
            {
                "Sid": "KeysInCustody",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": [key],
                "Condition": {"Null": {"kms:EncryptionContextKeys": "true"}},
            }
        ], function


def test_an_ssm_parameter_is_granted_as_such_and_nothing_is_granted_unconfigured():
    variables = {
        "CERTS_SECRETS_KMS_KEY_ID": "arn:aws:kms:eu-west-1:1:key/k",
        "CERTS_REGISTRY_ISSUER_KEYS_SECRET": "arn:aws:ssm:eu-west-1:1:parameter/certs/issuers",
    }
    [_, issuers] = packager.custody_statements(variables, signs=True)
    assert issuers["Action"] == ["ssm:GetParameter"]
    assert issuers["Resource"] == [variables["CERTS_REGISTRY_ISSUER_KEYS_SECRET"]]
    assert packager.custody_statements({}, signs=True) == []


def test_the_prod_stage_signs_for_a_real_registry_with_keys_in_custody():
    settings = packager.StageSettings(
        **{
            k.removeprefix("CERTS_").lower(): v
            for k, v in packager.function_variables("prod", "worker").items()
        }
    )
    assert settings.registry == "grpc" and settings.signs_transactions
    assert settings.secrets_kms_key_id and settings.registry_issuer_keys_secret
    assert not settings.registry_issuer_keys


# --- the security scan (checkov, make lint-template) -------------------------------------------

CHECK_ID = re.compile(r"CKV2?_AWS_\d+")
# Every check skipped, on which resources, and why it does not fit: a new skip must be added
# here on purpose (and to docs/DEPLOY.md), or this test fails.
SKIPPED_EVERYWHERE = {
    ("APIHandler", "CKV_AWS_116"),  # synchronous (API Gateway): a function DLQ gets nothing
    ("Worker", "CKV_AWS_116"),  # the SQS event source: the queue's dead-letter queue
    ("Reconciler", "CKV_AWS_116"),  # scheduled: the next minute's pass redoes a failed one
    ("APIHandler", "CKV_AWS_117"),  # no VPC: AWS APIs and the registry only
    ("Worker", "CKV_AWS_117"),
    ("Reconciler", "CKV_AWS_117"),
    ("APIHandler", "CKV_AWS_173"),  # no secret in the environment
    ("Worker", "CKV_AWS_173"),
    ("Reconciler", "CKV_AWS_173"),
    ("RestAPI", "CKV_AWS_120"),  # caching a write API
    ("OperatorAlarms", "CKV_AWS_26"),  # CloudWatch cannot publish to an aws/sns topic
}


def checkov_skips(template: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (name, skip["id"]): skip["comment"]
        for name, resource in template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }


@pytest.mark.parametrize("stage", STAGES)
def test_every_skipped_check_is_expected_and_says_why_in_one_line(templates, stage):
    template = templates[stage]
    skips = checkov_skips(template)
    expected = set(SKIPPED_EVERYWHERE)
    if not stage_key(stage):  # only a customer key satisfies these: the stage has none
        expected |= {
            (name, packager.NEEDS_STAGE_KEY[resource["Type"]])
            for name, resource in template["Resources"].items()
            if resource["Type"] in packager.NEEDS_STAGE_KEY
        }
    assert set(skips) == expected
    for (name, check), reason in skips.items():
        assert CHECK_ID.fullmatch(check), (name, check)
        assert reason.strip() and "\n" not in reason, (name, check)
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert all(f"`{check}`" in deploy for _, check in skips), "docs/DEPLOY.md lists every skip"


@pytest.mark.parametrize("stage", STAGES)
def test_the_environment_holds_no_secret_as_its_skipped_check_says(templates, stage):
    secrets = {
        f"CERTS_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert "CERTS_JWT_SECRET" in secrets
    for function in FUNCTIONS:
        variables = templates[stage]["Resources"][function]["Properties"]["Environment"]
        assert not secrets & set(variables["Variables"]), function


@pytest.mark.parametrize("stage", STAGES)
def test_queues_are_encrypted_under_kms_the_stages_key_when_it_names_one(templates, stage):
    for name, queue in resources_of(templates[stage], "AWS::SQS::Queue").items():
        props = queue["Properties"]
        assert props["KmsMasterKeyId"] == (stage_key(stage) or "alias/aws/sqs"), name
        assert "SqsManagedSseEnabled" not in props, name  # the two exclude each other


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_key_encrypts_the_table_and_every_log_group(templates, stage):
    key = stage_key(stage)
    template = templates[stage]
    groups = resources_of(template, "AWS::Logs::LogGroup")
    assert len(groups) == len(FUNCTIONS) + 1  # and the API's access log
    for name, group in groups.items():
        assert group["Properties"].get("KmsKeyId") == key, name
    sse = template["Resources"]["CertificateBook"]["Properties"]["SSESpecification"]
    assert sse.get("KMSMasterKeyId") == key


@pytest.mark.parametrize("stage", STAGES)
def test_roles_use_the_stage_key_only_through_dynamodb_and_sqs(templates, stage):
    key = stage_key(stage)
    template = templates[stage]
    for function in FUNCTIONS:
        role = template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
        at_rest = [s for s in statements(template, role) if s.get("Sid") == "KeyAtRest"]
        if not key:
            assert at_rest == [], function
            continue
        [grant] = at_rest
        assert grant["Resource"] == [key]
        assert "kms:Decrypt" in grant["Action"]
        # Never a direct call: an owner's seed stays the worker's alone (custody grants).
        assert grant["Condition"] == {
            "StringEquals": {
                "kms:ViaService": [
                    {"Fn::Sub": "dynamodb.${AWS::Region}.amazonaws.com"},
                    {"Fn::Sub": "sqs.${AWS::Region}.amazonaws.com"},
                ]
            }
        }


@pytest.mark.parametrize("stage", STAGES)
def test_the_api_traces_and_logs_every_request_to_a_group_with_retention(templates, stage):
    template = templates[stage]
    api = template["Resources"]["RestAPI"]["Properties"]
    assert api["TracingEnabled"] is True
    group = logical_target(api["AccessLogSetting"]["DestinationArn"])
    assert template["Resources"][group]["Type"] == "AWS::Logs::LogGroup"
    assert template["Resources"][group]["Properties"]["RetentionInDays"] == {
        "Fn::FindInMap": ["StageSettings", {"Ref": "Stage"}, "LogRetentionDays"]
    }
    fields = json.loads(api["AccessLogSetting"]["Format"])
    assert {"requestId", "status", "httpMethod", "resourcePath"} <= set(fields)


@pytest.mark.parametrize("stage", STAGES)
def test_every_function_has_a_reserved_concurrency_and_the_worker_source_keeps_to_it(
    templates, stage
):
    resources = templates[stage]["Resources"]
    reserved = {f: resources[f]["Properties"]["ReservedConcurrentExecutions"] for f in FUNCTIONS}
    configured = CONFIG["stages"][stage]["lambda_functions"]
    for function, name in FUNCTIONS.items():
        default = packager.DEFAULT_RESERVED_CONCURRENCY.get(function)
        if function == "Reconciler":
            shards = int(
                resources[function]["Properties"]["Environment"]["Variables"][
                    "CERTS_OPEN_COMMAND_SHARDS"
                ]
            )
            default = shards + 1  # every shard's pass and the schedule's at once
        assert reserved[function] == configured[name].get("reserved_concurrency", default)
    [source] = resources["Worker"]["Properties"]["Events"].values()
    # The event source never starts more workers than may run: no receive is throttled.
    assert source["Properties"]["ScalingConfig"] == {"MaximumConcurrency": reserved["Worker"]}


def test_a_configured_worker_concurrency_wins_and_an_unusable_one_is_refused():
    def template(worker: int | None) -> dict[str, Any]:
        functions = {name: {"Properties": {"Events": {}}} for name in ("APIHandler", "Reconciler")}
        worker_props: dict[str, Any] = {
            "Events": {"Source": {"Type": "SQS", "Properties": {"BatchSize": 10}}}
        }
        if worker is not None:  # as Chalice writes `reserved_concurrency` of config.json
            worker_props["ReservedConcurrentExecutions"] = worker
        return {"Resources": {**functions, "Worker": {"Properties": worker_props}}}

    configured = template(7)
    packager.limit_concurrency("dev", configured)
    worker = configured["Resources"]["Worker"]["Properties"]
    assert worker["ReservedConcurrentExecutions"] == 7
    assert worker["Events"]["Source"]["Properties"]["ScalingConfig"] == {"MaximumConcurrency": 7}
    for unusable in (0, 1, 1001):
        with pytest.raises(packager.PackagingError, match="reserved_concurrency"):
            packager.limit_concurrency("dev", template(unusable))


def test_ci_scans_every_stage_with_the_pinned_scanner_in_its_own_venv():
    [pin] = [
        line
        for line in (ROOT / "requirements-scan.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert re.fullmatch(r"checkov==\d+\.\d+\.\d+", pin)
    assert "checkov" not in (ROOT / "requirements-dev.txt").read_text()
    makefile = (ROOT / "Makefile").read_text()
    [recipe] = re.findall(r"^lint-template:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert "cfn-lint build/$(STAGE)/sam.json" in recipe
    assert "$(SCAN_VENV)/bin/checkov --file build/$(STAGE)/sam.json" in recipe
    assert "--soft-fail" not in recipe
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'for stage in dev prod; do\n  make lint-template STAGE="$stage"' in ci
    assert set(STAGES) == {"dev", "prod"}
