"""The `Chronicler` port over gRPC: Project Origin's ChroniclerService.RegisterClaimIntent.

A claim intent is not a registry transaction: asking twice leaves one unused record at the
chronicler and nothing in the registry (registry/chronicler.py). So, unlike the registry's
client, this one has no "ambiguous": every failure that may pass is `RegistryUnavailable` (the
claim is built again later, and asks again), and a request the chronicler refuses as such is
`RegistryRefused` (the claim cannot be built; asking again would be refused again).

- No connection ready within `connect_timeout_s`, UNAVAILABLE, DEADLINE_EXCEEDED (`timeout_s`),
  RESOURCE_EXHAUSTED, CANCELLED, ABORTED, UNKNOWN, INTERNAL, DATA_LOSS: unavailable.
- UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, NOT_FOUND: the call never reached the
  chronicler's logic (a configuration to fix): unavailable, as for the registry.
- INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE: refused.
- An answer without a signature, or one that does not verify under the chronicler's keys when
  those are configured: unavailable (an allocation carrying it would only be refused).
"""

from __future__ import annotations

import time

import grpc

from chalicelib.registry import chronicler, protocodec
from chalicelib.registry.crypto import pedersen
from chalicelib.registry.crypto.ristretto import scalar_to_bytes
from chalicelib.registry.grpc_client import open_channel
from chalicelib.registry.port import RegistryRefused, RegistryUnavailable
from chalicelib.registry.proto.project_origin.chronicler.v1 import chronicler_pb2 as ch

METHOD = "/project_origin.chronicler.v1.ChroniclerService/RegisterClaimIntent"

_REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}


class GrpcChronicler:
    def __init__(
        self,
        target: str,
        *,
        tls: bool = True,
        root_certificates: bytes | None = None,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        public_keys: list[bytes] | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        if channel is None:
            channel = open_channel(target, tls, root_certificates)
        self.target = target
        self._channel = channel
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._public_keys = list(public_keys or [])
        self._register = channel.unary_unary(
            METHOD,
            request_serializer=ch.ClaimIntentRequest.SerializeToString,
            response_deserializer=ch.ClaimIntentResponse.FromString,
        )

    def __repr__(self) -> str:
        return f"GrpcChronicler({self.target})"

    def close(self) -> None:
        # As GrpcRegistry.close: let grpcio's connectivity poller finish before closing.
        time.sleep(0.25)
        self._channel.close()

    def register_claim_intent(
        self, registry: str, certificate_id: str, quantity: int, blinding: int
    ) -> bytes:
        chronicler.check_quantity(quantity)
        request = ch.ClaimIntentRequest(
            certificate_id=protocodec.stream_ref(registry, certificate_id),
            quantity=quantity,
            random_r=scalar_to_bytes(blinding),
        )
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self._connect_timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise RegistryUnavailable(f"cannot connect to the chronicler {self.target}") from exc
        try:
            answer = self._register(request, timeout=self._timeout_s)
        except grpc.RpcError as err:
            code = err.code()
            said = f"the chronicler {self.target}: {code.name} {err.details()}"
            if code in _REFUSED:
                raise RegistryRefused(f"refused by {said}") from err
            raise RegistryUnavailable(said) from err
        signature = bytes(answer.signature)
        if not signature:
            raise RegistryUnavailable(f"the chronicler {self.target} answered no signature")
        commitment = pedersen.commit(quantity, blinding)
        if self._public_keys and not chronicler.signed_by_chronicler(
            self._public_keys, signature, registry, certificate_id, commitment
        ):
            raise RegistryUnavailable(
                f"the chronicler {self.target} signed with none of its configured keys"
            )
        return signature
