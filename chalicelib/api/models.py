"""The shapes of the public HTTP contract (API.md), as pydantic models.

The handlers parse with these and answer with these, and /v1/openapi.json is generated from
these, so the published contract cannot drift from the code. Structure is checked here (400);
the rules of the domain are checked by the domain (422).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

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

Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
OwnerId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
GridArea = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}[A-Z0-9-]{0,14}$")]
AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
AttributeValue = Annotated[str, StringConstraints(max_length=512)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IssueRequest(_Request):
    type: CertificateType
    gsrn: str = Field(description="The metering point: 18 digits.")
    grid_area: GridArea = Field(examples=["DK1"])
    start: AwareDatetime
    end: AwareDatetime
    quantity_wh: StrictInt
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
    quantities_wh: list[StrictInt] = Field(min_length=1, max_length=domain.MAX_PARTS_PER_SLICE)


class TransferRequest(_Request):
    certificate_id: Id
    slice_id: Id
    receiver: OwnerId
    quantity_wh: StrictInt

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
    quantity_wh: StrictInt


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
    transaction_ids: list[str] = Field(
        default_factory=list,
        description="The registry ids of its transactions, in sending order: what an "
        "operator looks up in the registry before resolving an IN_DOUBT command.",
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
            transaction_ids=[
                transaction_id_of(base64.b64decode(tx)) for tx in command.transactions
            ],
        )


class SliceView(BaseModel):
    slice_id: str
    owner: str
    quantity_wh: int
    state: SliceState


class CertificateView(BaseModel):
    certificate_id: str
    type: CertificateType
    gsrn: str
    grid_area: str
    start: datetime
    end: datetime
    quantity_wh: int
    status: domain.CertificateStatus
    attributes: dict[str, str]
    slices: list[SliceView]

    @classmethod
    def of(cls, cert: Certificate, viewer: str | None) -> CertificateView:
        """The certificate with the viewer's slices (every slice for viewer None: issuers and
        operators). Slices cut into parts are history and are left out."""
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
            attributes=cert.attributes,
            slices=slices,
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
    complete: bool = Field(description="False when the pass stopped at its work bound.")


BatchItemAnswer.model_rebuild()
