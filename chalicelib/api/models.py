"""The shapes of the public HTTP contract (API.md), as pydantic models.

The handlers parse with these and answer with these, and /v1/openapi.json is generated from
these, so the published contract cannot drift from the code. Structure is checked here (400);
the rules of the domain are checked by the domain (422).
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
)

from chalicelib import domain
from chalicelib.domain import (
    Certificate,
    CertificateType,
    Command,
    CommandKind,
    CommandStatus,
    IssueSpec,
    Period,
    SliceRef,
    SliceState,
)
from chalicelib.registry.envelope import transaction_id_of

# Ids become DynamoDB keys (at most 2,048 / 1,024 bytes, checked by AWS on reads too) and, for
# certificates, SQS message group ids (at most 128 characters, ASCII letters, digits and
# punctuation), and they travel in paths. Ours are UUIDs: 64 of the characters a URL path
# keeps as they are (RFC 3986 "unreserved") leave room and fit everywhere.
ID_MAX_LENGTH = 64
ID_PATTERN = r"^[A-Za-z0-9._~-]+$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
OwnerId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
GridArea = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}[A-Z0-9-]{0,14}$")]
AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
AttributeValue = Annotated[str, StringConstraints(max_length=512)]


# RFC 3339 date-times only: pydantic alone would also take "0.5" as a Unix time.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def _rfc3339(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("an RFC 3339 date-time, e.g. 2026-06-01T10:00:00Z")
    return value


Moment = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    Field(description="RFC 3339, with a time zone, e.g. 2026-06-01T10:00:00Z."),
]


def _whole_number(value: Any) -> Any:
    """JSON Schema's integers include 1.0: take a float that is a whole number as one."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Checked by the domain (a 422 names the rule), declared here for the OpenAPI document.
QuantityWh = Annotated[
    StrictInt,
    BeforeValidator(_whole_number),
    Field(
        json_schema_extra={"minimum": 1, "maximum": domain.MAX_QUANTITY_WH},
        description="Whole Wh, 1 to 2^32-1.",
    ),
]
Gsrn = Annotated[
    str,
    Field(
        json_schema_extra={"pattern": r"^[0-9]{18}$"}, description="The metering point: 18 digits."
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IssueRequest(_Request):
    type: CertificateType
    gsrn: Gsrn
    grid_area: GridArea = Field(examples=["DK1"])
    start: Moment
    end: Moment
    quantity_wh: QuantityWh
    owner: OwnerId
    attributes: dict[AttributeKey, AttributeValue] = Field(
        default_factory=dict, max_length=domain.MAX_ATTRIBUTES
    )

    def to_spec(self) -> IssueSpec:
        return IssueSpec(
            type=self.type,
            gsrn=domain.check_gsrn(self.gsrn),
            grid_area=self.grid_area,
            period=Period.of(self.start, self.end),
            quantity_wh=domain.check_quantity(self.quantity_wh),
            owner=self.owner,
            attributes=self.attributes,
        )


class BatchIssueRequest(_Request):
    # Items are validated one by one, so that one bad item does not refuse the whole batch.
    certificates: list[dict[str, Any]] = Field(min_length=1, max_length=100)


class SliceRequest(_Request):
    slice_id: Id
    quantities_wh: list[QuantityWh] = Field(min_length=1, max_length=domain.MAX_PARTS_PER_SLICE)


class TransferRequest(_Request):
    certificate_id: Id
    slice_id: Id
    receiver: OwnerId
    quantity_wh: QuantityWh

    def ref(self) -> SliceRef:
        return SliceRef(certificate_id=self.certificate_id, slice_id=self.slice_id)


class SliceRefBody(_Request):
    certificate_id: Id
    slice_id: Id

    def ref(self) -> SliceRef:
        return SliceRef(certificate_id=self.certificate_id, slice_id=self.slice_id)


class ClaimRequest(_Request):
    production: SliceRefBody
    consumption: SliceRefBody
    quantity_wh: QuantityWh


class ResolveRequest(_Request):
    # committed: the registry applied the in-doubt transaction; rejected: it refused it, or
    # the command is to be abandoned; not_sent: it never reached the registry (its id is not
    # there), so its stored bytes may be sent now.
    outcome: Literal["committed", "rejected", "not_sent"]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class EmptyRequest(_Request):
    """Writes without a body (withdraw, reconcile) still take `{}`."""


# --- answers ----------------------------------------------------------------------------------


class CommandAccepted(BaseModel):
    command_id: str
    kind: CommandKind
    status: CommandStatus
    certificate_id: str

    @classmethod
    def of(cls, command: Command) -> CommandAccepted:
        return cls(
            command_id=command.command_id,
            kind=command.kind,
            status=command.status,
            certificate_id=command.certificate_id,
        )


class BatchItemAnswer(BaseModel):
    index: int
    command: CommandAccepted | None = None
    error: Problem | None = None


class BatchAccepted(BaseModel):
    commands: list[BatchItemAnswer]
    accepted: int
    refused: int


class StrandedAllocationView(BaseModel):
    side: CertificateType
    certificate_id: str
    slice_id: str = Field(description="The slice, now in state allocated.")
    allocation_id: str
    transaction_id: str = Field(description="The allocation's transaction, committed.")


class CommandView(BaseModel):
    command_id: str
    kind: CommandKind
    status: CommandStatus
    certificate_id: str
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    step: int = Field(description="How many of its registry transactions have completed.")
    steps: int = Field(description="How many registry transactions it takes (0 until built).")
    slices: list[SliceRefBody] = Field(default_factory=list)
    new_slices: list[SliceRefBody] = Field(
        default_factory=list,
        description="Once COMMITTED: the slices it made that are acted on next (an issued "
        "certificate's slice, the parts of a slice, the slice a transfer's receiver got).",
    )
    quantity_wh: int | None = None
    receiver: str | None = None
    sender: str | None = Field(
        default=None,
        description="A transfer's sender (the owner who made it); in a receiver's list, "
        "`slices` is the slice they received.",
    )
    transaction_ids: list[str] = Field(
        default_factory=list,
        description="The registry ids of its transactions, in sending order: what an "
        "operator looks up in the registry before resolving an IN_DOUBT command.",
    )
    stranded: list[StrandedAllocationView] = Field(
        default_factory=list,
        description="A claim refused after an allocation committed: each allocation it left "
        "in the registry for good, whose slice reads allocated (not usable).",
    )
    claim_id: str | None = Field(
        default=None,
        description="An unclaim (made by the service when the certificate on a claim's other "
        "side is withdrawn): the claim whose slice it gives back.",
    )

    @classmethod
    def of(cls, command: Command) -> CommandView:
        return cls(
            command_id=command.command_id,
            kind=command.kind,
            status=command.status,
            certificate_id=command.certificate_id,
            created_at=command.created_at,
            updated_at=command.updated_at,
            error=command.error,
            # A committed command has completed all its steps.
            step=len(command.transactions)
            if command.status == CommandStatus.COMMITTED
            else command.step,
            steps=len(command.transactions),
            slices=[
                SliceRefBody(certificate_id=r.certificate_id, slice_id=r.slice_id)
                for r in command.slices
            ],
            new_slices=[
                SliceRefBody(certificate_id=r.certificate_id, slice_id=r.slice_id)
                for r in domain.slices_made(command)
            ],
            quantity_wh=command.quantity_wh,
            receiver=command.receiver,
            sender=command.caller if command.kind == CommandKind.TRANSFER else None,
            transaction_ids=[
                transaction_id_of(base64.b64decode(tx)) for tx in command.transactions
            ],
            stranded=[StrandedAllocationView(**s.model_dump()) for s in command.stranded],
            claim_id=command.claim_id,
        )


class SliceView(BaseModel):
    slice_id: str
    owner: str
    quantity_wh: int
    state: SliceState


class HashedAttributeView(BaseModel):
    registry_value: str = Field(
        description="The value the registry holds: base64(SHA-256(key + value + "
        "certificate_id + HEX(salt)))"
    )
    salt: str | None = Field(
        default=None,
        description="base64 of the salt, for the certificate's owners in GET "
        "/v1/certificates/{certificate_id}: with the value it shows the registry's hash "
        "is of that value",
    )


class CertificateView(BaseModel):
    certificate_id: str
    type: CertificateType
    gsrn: str
    grid_area: str
    start: datetime
    end: datetime
    quantity_wh: int
    status: domain.CertificateStatus
    registry: str | None = Field(
        default=None, description="The registry that holds the certificate's stream."
    )
    attributes: dict[str, str]
    # Which attributes the registry holds hashed. Owners see their values in `attributes`;
    # issuers and operators see the registry's hash there instead.
    hashed_attributes: dict[str, HashedAttributeView] = Field(default_factory=dict)
    slices: list[SliceView]
    version: int = Field(
        default=0,
        description="Grows with every change to the certificate: what a client following "
        "the change feed keeps, to tell a newer state from one it has.",
    )

    @classmethod
    def of(
        cls,
        cert: Certificate,
        viewer: str | None,
        salts: dict[str, bytes] | None = None,
        registry: str | None = None,
    ) -> CertificateView:
        """The certificate with the viewer's slices (every slice for viewer None: issuers and
        operators). Slices cut into parts are history and are left out. Hashed attributes
        are in clear for owners only; `salts` (opened, owners only) are shown with them."""
        slices = [
            SliceView(slice_id=s.slice_id, owner=s.owner, quantity_wh=s.quantity_wh, state=s.state)
            for s in cert.slices.values()
            if (viewer is None or s.owner == viewer) and s.state != SliceState.SLICED
        ]
        return cls(
            certificate_id=cert.certificate_id,
            type=cert.type,
            gsrn=cert.gsrn,
            grid_area=cert.grid_area,
            start=cert.period.start,
            end=cert.period.end,
            quantity_wh=cert.quantity_wh,
            status=cert.status,
            # `registry`: the service's one registry, for a certificate recorded before any other
            registry=cert.registry or registry,
            attributes={
                key: cert.hashed_attributes[key].registry_value
                if viewer is None and key in cert.hashed_attributes
                else value
                for key, value in cert.attributes.items()
            },
            hashed_attributes={
                key: HashedAttributeView(
                    registry_value=hashed.registry_value,
                    salt=base64.b64encode(salts[key]).decode()
                    if viewer is not None and salts and key in salts
                    else None,
                )
                for key, hashed in cert.hashed_attributes.items()
            },
            slices=slices,
            version=cert.version,
        )


class CertificatePage(BaseModel):
    items: list[CertificateView]
    next_cursor: str | None = None


class CommandPage(BaseModel):
    items: list[CommandView]
    next_cursor: str | None = None


class Bucket(BaseModel):
    start: datetime
    quantity_wh: int
    certificates: int


class Aggregate(BaseModel):
    granularity: Literal["hour", "day", "week", "month"]
    type: CertificateType | None = None
    buckets: list[Bucket]


class MatchingBucket(BaseModel):
    start: datetime
    consumption_wh: int = Field(description="Consumption you hold, claimed or not.")
    matched_wh: int = Field(description="Of it, matched by production you claimed against it.")
    unmatched_wh: int
    coverage_pct: float | None = Field(
        default=None, description="matched / consumption, in percent; absent without consumption."
    )
    unclaimed_production_wh: int = Field(
        description="Production of this bucket you hold and have not claimed."
    )

    @classmethod
    def of(cls, bucket: Any) -> MatchingBucket:
        return cls(
            start=bucket.start,
            consumption_wh=bucket.consumption_wh,
            matched_wh=bucket.matched_wh,
            unmatched_wh=bucket.unmatched_wh,
            coverage_pct=None if bucket.coverage is None else round(100 * bucket.coverage, 2),
            unclaimed_production_wh=bucket.unclaimed_production_wh,
        )


class MatchedSource(BaseModel):
    technology: str
    fuel: str
    matched_wh: int


class MatchingReport(BaseModel):
    granularity: Literal["hour", "day", "month"]
    start: datetime
    end: datetime
    buckets: list[MatchingBucket]
    total: MatchingBucket
    hourly_matching_score_pct: float | None = Field(
        default=None, description="Consumption matched hour by hour, in percent of all consumption."
    )
    by_source: list[MatchedSource] = Field(
        description="Matched production by technology and fuel code ('unknown' where the "
        "certificate's attributes do not say)."
    )


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    stage: str
    version: str = ""
    dependencies: dict[str, str]


class ProblemField(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: every error answer has this shape."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ProblemField] | None = None
    request_id: str | None = Field(
        default=None, description="Also in the X-Request-Id header: quote it in a report."
    )


class ReconcileReport(BaseModel):
    started_at: datetime
    finished_at: datetime
    actions: dict[str, int]
    complete: bool = Field(
        description="False when the pass stopped at its work bound, or a phase of it failed."
    )
    unsettled: dict[str, str] = Field(
        default_factory=dict,
        description="The commands the pass could not settle (id: why); the next pass tries "
        "again, and after a few passes the command is marked for an operator with the reason.",
    )
    failed_phases: dict[str, str] = Field(
        default_factory=dict, description="Phases of the pass that failed (phase: why)."
    )


BatchItemAnswer.model_rebuild()
