"""Create the book's table and the queues from infra/resources.json, the template that deploys
them, so the embedded stack and the moto-backed tests run on the very same definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chalicelib.settings import Settings

TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "resources.json"
# CloudFormation properties that have no meaning for moto, or are set by other calls. The
# deployed names are per stage (CloudFormation substitutions); locally they come from Settings.
_TABLE_ONLY_IN_CLOUDFORMATION = {
    "TableName",
    "PointInTimeRecoverySpecification",
    "SSESpecification",
    "DeletionProtectionEnabled",
    "TimeToLiveSpecification",
    "Tags",
}


def template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


def table_definition(resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CreateTable arguments of the book, as the template declares it for a new stack: an
    index declared only under a condition (kept for an upgrade, `Fn::If`) is left out."""
    props = (resources or template()["Resources"])["CertificateBook"]["Properties"]
    definition = {k: v for k, v in props.items() if k not in _TABLE_ONLY_IN_CLOUDFORMATION}
    definition["GlobalSecondaryIndexes"] = [
        index for index in props["GlobalSecondaryIndexes"] if "Fn::If" not in index
    ]
    return definition


def _queue_attributes(props: dict[str, Any], dlq_arn: str | None) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for key, value in props.items():
        if key == "QueueName":
            continue
        if key == "RedrivePolicy":
            if dlq_arn is not None:
                attributes[key] = json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": value["maxReceiveCount"]}
                )
        elif isinstance(value, bool):
            attributes[key] = "true" if value else "false"
        else:
            attributes[key] = str(value)
    return attributes


def create(dynamodb: Any, sqs: Any, settings: Settings) -> dict[str, str]:
    """Create the table and queues (if missing); returns the queue URLs by logical name."""
    resources = template()["Resources"]
    existing = dynamodb.list_tables()["TableNames"]
    if settings.table_name not in existing:
        dynamodb.create_table(TableName=settings.table_name, **table_definition(resources))
    dlq_url = sqs.create_queue(
        QueueName=settings.dead_letter_queue_name,
        Attributes=_queue_attributes(resources["CommandDeadLetterQueue"]["Properties"], None),
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName=settings.queue_name,
        Attributes=_queue_attributes(resources["CommandQueue"]["Properties"], dlq_arn),
    )["QueueUrl"]
    return {"CommandQueue": queue_url, "CommandDeadLetterQueue": dlq_url}
