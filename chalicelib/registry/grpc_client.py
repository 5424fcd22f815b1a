"""The `Registry` port over gRPC: Project Origin's RegistryService (REGISTRY.md).

Its one hard job, as for the HTTP client, is to sort every failure of a send into the kind the
worker acts on: `RegistryUnavailable` = certainly nothing was sent, the same bytes may go again
later; `RegistryAmbiguous` = maybe applied, never send again blindly. A wrong "unavailable" is a
double send (I1), a wrong "ambiguous" only costs a resolution, so when in doubt: ambiguous.

- Before a send, the channel must be READY within `connect_timeout_s`; if it is not, no byte of
  the request was written: unavailable. gRPC reports a failure to connect and a connection lost
  after writing with the same status (UNAVAILABLE), so this check is what tells them apart.
- After that, UNAVAILABLE is ambiguous, unless the server says it refused the call before
  looking at it: our simulator sends the trailing metadata `registry-refused: before-apply`
  with it. RESOURCE_EXHAUSTED (throttling: the call was refused) is unavailable.
  DEADLINE_EXCEEDED, CANCELLED, a broken stream (UNKNOWN, INTERNAL, DATA_LOSS, ABORTED) are
  ambiguous. INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE refuse the request as it
  is (`RegistryRefused`: nothing applied, and never will be); UNAUTHENTICATED,
  PERMISSION_DENIED, UNIMPLEMENTED and NOT_FOUND say the call never reached the registry's
  rules (a configuration to fix): unavailable. Anything else is ambiguous.
- SendTransactions answers nothing about the outcome (the real registry's response is empty):
  every receipt is PENDING and the worker asks GetTransactionStatus, so this registry always
  `supports_queries`. A batch larger than `max_batch` goes in several calls; if a later call
  fails (even refused), the earlier ones were sent, so the whole batch is ambiguous.
- Queries change nothing, so they are retried (`query_attempts`, with back-off) on UNAVAILABLE,
  DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED, then reported unavailable.

Transaction bytes travel exactly as stored: the request is written with an identity serializer
(each stored transaction as field 1 of SendTransactionsRequest) and stream answers are split
from the raw response, so the ids we computed are the ids of the bytes on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc

from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.port import (
    QueriesNotSupported,
    Receipt,
    RegistryAmbiguous,
    RegistryRefused,
    RegistryUnavailable,
    TransactionStatus,
)
from chalicelib.registry.proto.project_origin.common.v1 import common_pb2
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2 as reg

SERVICE = "/project_origin.registry.v1.RegistryService/"
REFUSED_KEY = "registry-refused"
REFUSED_BEFORE_APPLY = "before-apply"

_AMBIGUOUS = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.ABORTED,
}
_REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
_NOT_REACHED = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.NOT_FOUND,
}
_RETRY_QUERY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class RegistryCallRefused(Exception):
    """The registry refused the call as such (bad request, not allowed, not implemented) or
    answered with something this client does not understand: not a fault to retry."""


def open_channel(target: str, tls: bool, root_certificates: bytes | None) -> grpc.Channel:
    """A channel to a registry or a chronicler: TLS (with these roots, or the system's) or plain."""
    if tls:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
    return grpc.insecure_channel(target)


class GrpcRegistry:
    def __init__(
        self,
        target: str,
        *,
        tls: bool = True,
        root_certificates: bytes | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        max_batch: int = 100,
        query_attempts: int = 3,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        channel: grpc.Channel | None = None,
    ) -> None:
        if channel is None:
            channel = open_channel(target, tls, root_certificates)
        self._channel = channel
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_batch = max_batch
        self._query_attempts = query_attempts
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._send = channel.unary_unary(
            SERVICE + "SendTransactions",
            request_serializer=_identity,
            response_deserializer=reg.SubmitTransactionResponse.FromString,
        )
        self._status = channel.unary_unary(
            SERVICE + "GetTransactionStatus",
            request_serializer=reg.GetTransactionStatusRequest.SerializeToString,
            response_deserializer=reg.GetTransactionStatusResponse.FromString,
        )
        self._stream = channel.unary_unary(
            SERVICE + "GetStreamTransactions",
            request_serializer=reg.GetStreamTransactionsRequest.SerializeToString,
            response_deserializer=_identity,
        )

    def close(self) -> None:
        # grpcio's connectivity poller (behind channel_ready_future) looks at the channel for up
        # to 0.2 s after the last wait; closing under it makes that thread raise.
        time.sleep(0.25)
        self._channel.close()

    @property
    def supports_queries(self) -> bool:
        return True

    def reachable(self) -> None:
        """For /v1/health: raises unless a connection is ready within the connect timeout."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self._connect_timeout_s)
        except grpc.FutureTimeoutError:
            raise RegistryUnavailable("no connection to the registry") from None

    # --- the Registry port ---------------------------------------------------------------------

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        batch = [bytes(data) for data in transactions]
        if not batch:
            return []
        for start in range(0, len(batch), self._max_batch):
            try:
                self._send_one_call(batch[start : start + self._max_batch])
            except (RegistryUnavailable, RegistryRefused) as exc:
                if start == 0:
                    raise
                raise RegistryAmbiguous(
                    f"part of the batch was sent before the registry became unavailable: {exc}"
                ) from exc
        return [Receipt(transaction_id_of(data), TransactionStatus.PENDING) for data in batch]

    def status(self, transaction_id: str) -> Receipt:
        request = reg.GetTransactionStatusRequest(id=transaction_id)
        answer = self._query(self._status, request)
        try:
            status = TransactionStatus(reg.TransactionState.Name(answer.status))
        except ValueError as exc:
            raise RegistryCallRefused(f"unknown transaction state {answer.status}") from exc
        return Receipt(transaction_id, status, answer.message)

    def stream(self, certificate_id: str) -> list[bytes]:
        request = reg.GetStreamTransactionsRequest(stream_id=common_pb2.Uuid(value=certificate_id))
        raw = self._query(self._stream, request)
        try:
            return split_repeated_field_1(raw)
        except ValueError as exc:
            raise RegistryCallRefused(f"not a stream of transactions: {exc}") from exc

    # --- inside --------------------------------------------------------------------------------

    def _send_one_call(self, chunk: list[bytes]) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self._connect_timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise RegistryUnavailable("cannot connect to the registry") from exc
        try:
            self._send(encode_repeated_field_1(chunk), timeout=self._timeout_s)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNAVAILABLE and _refused_before_apply(err):
                raise RegistryUnavailable(f"registry unavailable: {err.details()}") from err
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise RegistryUnavailable(f"registry is throttling: {err.details()}") from err
            if code in _NOT_REACHED:
                raise RegistryUnavailable(f"{code.name}: {err.details()}") from err
            if code in _REFUSED:
                refused = f"registry refused the call: {code.name} {err.details()}"
                raise RegistryRefused(refused) from err
            raise RegistryAmbiguous(f"{code.name} after sending: {err.details()}") from err

    def _query(self, method, request):
        for attempt in range(self._query_attempts):
            try:
                return method(request, timeout=self._timeout_s)
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    raise QueriesNotSupported(
                        f"the registry answers no queries: {err.details()}"
                    ) from err
                if code not in _RETRY_QUERY:
                    raise RegistryCallRefused(
                        f"query refused: {code.name} {err.details()}"
                    ) from err
                if attempt + 1 == self._query_attempts:
                    raise RegistryUnavailable(f"query failed: {code.name} {err.details()}") from err
                self._sleep(self._backoff_s * 2**attempt)
        raise AssertionError("unreachable")


def _identity(data: bytes) -> bytes:
    return data


def _refused_before_apply(err: grpc.RpcError) -> bool:
    trailing = err.trailing_metadata() or ()
    return any(key == REFUSED_KEY and value == REFUSED_BEFORE_APPLY for key, value in trailing)


# --- field 1 of a message, by hand: keeps each transaction's bytes exactly ---------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_repeated_field_1(items: Sequence[bytes]) -> bytes:
    """`repeated bytes/message x = 1` holding `items` as they are (tag 0x0A, length, bytes)."""
    return b"".join(b"\x0a" + _varint(len(item)) + item for item in items)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def split_repeated_field_1(data: bytes) -> list[bytes]:
    """The raw bytes of each field-1 entry of a message (other fields skipped)."""
    items, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, i = _read_varint(data, i)
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        elif wire_type == 2:
            length, i = _read_varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            if field_number == 1:
                items.append(data[i : i + length])
            i += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if i != len(data):
        raise ValueError("truncated message")
    return items
