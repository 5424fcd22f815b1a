"""The whole service on one machine: no cloud account, no Docker.

- DynamoDB and SQS: two moto servers (devstack/motoserver.py: moto with its per-request
  overheads taken out), each its own process (one moto server is one Python process on one
  core; two spread the load), on 127.0.0.1, with the table and queues created
  from infra/resources.json, the template that deploys them.
- The HTTP API: app.app served by Chalice's threaded local server.
- The worker: pollers that feed queue messages to app.worker as Lambda's event source mapping
  does (batches of 10, partial batch responses, redelivery after the visibility timeout, the
  FIFO dead-letter queue after the redrive policy's receives).
- The reconciler: a ticker that calls app.reconciler on its schedule.
- The registry: the simulator as a local HTTP server, reached over the network like a real one.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import boto3

from chalicelib import composition
from chalicelib.registry.sandbox.simulator import SimulatorConfig
from chalicelib.settings import Settings
from devstack import motoserver, ops_page, registry_server, resources
from devstack.poller import QueuePoller

HOST = "127.0.0.1"  # the stack binds nothing but the loopback address
log = logging.getLogger("devstack")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _access_line(handler: Any, format: str, *args: Any) -> None:
    print(f"access {handler.address_string()} {format % args}", flush=True)


@dataclass
class StackOptions:
    port: int = 8000
    registry_port: int = 0
    workers: int = 4
    reconcile_every_s: float = 60.0
    registry: SimulatorConfig = field(default_factory=lambda: SimulatorConfig(queries=True))
    jwt_secret: str | None = None
    visibility_timeout_s: int = 15  # short locally, so a failed message comes back soon
    log_requests: bool = False
    registry_protocol: str = "http"  # or "grpc": real transactions, verified, over gRPC
    # With grpc: these grid areas name a simulated chronicler (its own key), which the
    # registry then requires on their allocations.
    chronicler_areas: tuple[str, ...] = ()
    # A federation: this many registries (dk1, dk2, ...), grid area DKn's issuer on the n-th,
    # and a matching boundary over all of them. The fault options apply to the first only.
    registries: int = 1


def federation_areas(registries: int) -> dict[str, str]:
    """Grid area -> registry name of an embedded federation: DK1 -> dk1, DK2 -> dk2, ..."""
    return {f"DK{n}": f"dk{n}" for n in range(1, registries + 1)}


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self._processes: list[subprocess.Popen] = []
        self.moto_pids: dict[str, int] = {}  # by service: the moto server processes
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.pollers: list[QueuePoller] = []
        self.api_url = f"http://{HOST}:{options.port}"
        self.registry_url = ""
        self.services: composition.Services | None = None
        # Every registry's simulator by name (one unless federated); each serves its own
        # control plane (faults, log) over HTTP.
        self.simulators: dict[str, Any] = {}
        self._servers: list[Any] = []

    @property
    def http_servers(self) -> list[Any]:
        """Each registry's control plane (HTTP), in the order of `simulators`."""
        return [s for s in self._servers if hasattr(s, "url")] or [self._registry]

    @property
    def simulator(self):
        """The registry simulator behind the stack (its log, faults, drift injection)."""
        return self._registry.simulator

    # --- start ---------------------------------------------------------------------------

    def start(self) -> Stack:
        """Everything, or nothing: a start that fails stops what it had started."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Stack:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
        endpoints = {service: self._moto_server(service) for service in ("dynamodb", "sqs")}
        for service, url in endpoints.items():
            os.environ[f"AWS_ENDPOINT_URL_{service.upper()}"] = url
        # Short timeouts locally, still ordered as on AWS: registry call < worker run < lease <
        # visibility timeout, so a message cannot reach the dead-letter queue (10 receives)
        # while a worker still holds its command's lease.
        common = {"stage": "local", "registry_timeout_s": 5, "lambda_timeout_s": 10, "lease_s": 20}
        if self.options.jwt_secret:
            common["jwt_secret"] = self.options.jwt_secret
        if self.options.registries > 1:
            settings = self._serve_federation(common)
        elif self.options.registry_protocol == "grpc":
            settings = self._serve_grpc_registry(common)
        else:
            self._registry = registry_server.serve(
                self.options.registry, HOST, self.options.registry_port
            )[0]
            settings = Settings(
                registry="http",
                registry_url=self._registry.url,
                registry_queries=self.options.registry.queries,
                **common,
            )
        self.registry_url = self._registry.url
        self.simulators = self.simulators or {settings.registry_name: self._registry.simulator}
        session = boto3.Session(region_name=settings.region)
        sqs = session.client("sqs")
        urls = resources.create(session.client("dynamodb"), sqs, settings)
        sqs.set_queue_attributes(
            QueueUrl=urls["CommandQueue"],
            Attributes={"VisibilityTimeout": str(self.options.visibility_timeout_s)},
        )
        settings = settings.model_copy(update={"queue_url": urls["CommandQueue"]})
        self.settings = settings
        self.services = composition.build(settings, session=session)
        self.dead_letter_url = urls["CommandDeadLetterQueue"]

        import app as app_module  # the deployed wiring, unchanged

        self.app_module = app_module
        app_module.use_services(self.services)
        self.ops_page = ops_page.OpsPage(
            app_module.services, sqs, urls["CommandQueue"], self.dead_letter_url
        )
        self._serve_api()
        for i in range(self.options.workers):
            poller = QueuePoller(
                sqs, urls["CommandQueue"], lambda event: app_module.worker(event, None), wait_s=1
            )
            self.pollers.append(poller)
            self._thread(poller.run, f"worker-{i}")
        self._thread(self._tick, "reconciler")
        return self

    def _serve_grpc_registry(self, common: dict) -> Settings:
        """The verifying simulator over gRPC, as a real registry is reached, with real proofs
        and signatures; the same simulator also answers the HTTP control plane (faults, log)
        that the demo and tests use. A gRPC registry answers queries: sends are PENDING."""
        from chalicelib.registry.sandbox.simulator import RegistrySimulator
        from chalicelib.registry.sandbox.verifier import ProtoLedger
        from devstack import registry_grpc

        # The issuers' keys of the very settings the service signs with (CERTS_REGISTRY_ISSUER_KEYS,
        # its secret, or CERTS_REGISTRY_SANDBOX_SECRET): one set on both sides of the stack.
        issuers = composition.issuer_keys_for(Settings(**common))
        chroniclers = self._serve_chronicler()
        simulator = RegistrySimulator(
            replace(self.options.registry, queries=True),
            ledger=ProtoLedger(
                issuers.public_keys,
                chronicler_keys=lambda area: (
                    [chroniclers[area].public_keys()[0]] if area in chroniclers else []
                ),
            ),
        )
        self._grpc = registry_grpc.serve(simulator, HOST, 0)
        self._registry = registry_server.serve(simulator, HOST, self.options.registry_port)[0]
        self.registry_target = self._grpc.target
        return Settings(
            registry="grpc",
            registry_grpc_target=self._grpc.target,
            registry_grpc_tls=False,
            registry_queries=True,
            chroniclers=chroniclers,
            **common,
        )

    def _serve_federation(self, common: dict) -> Settings:
        """Registries dk1..dkN, each a simulator of its own that knows the others (the other
        side of an allocation is looked up in its registry), over HTTP or gRPC as the single
        registry would be; grid area DKn's issuer uses dkn, and a claim may match any two."""
        from chalicelib.registry.sandbox.simulator import RegistrySimulator
        from chalicelib.registry.sandbox.verifier import ProtoLedger
        from chalicelib.settings import RegistryTarget

        grpc = self.options.registry_protocol == "grpc"
        areas = federation_areas(self.options.registries)
        issuers = composition.issuer_keys_for(Settings(**common)) if grpc else None
        chroniclers = self._serve_chronicler() if grpc else {}
        targets = {}
        for n, name in enumerate(areas.values()):
            config = (
                self.options.registry
                if n == 0
                else replace(self.options.registry, outages=(), ambiguous_rate=0.0, lost_rate=0.0)
            )
            if grpc:
                assert issuers is not None
                config = replace(config, queries=True)
            simulator = RegistrySimulator(
                config,
                ledger=ProtoLedger(
                    issuers.public_keys,
                    registry=name,
                    chronicler_keys=lambda area: (
                        [chroniclers[area].public_keys()[0]] if area in chroniclers else []
                    ),
                )
                if issuers
                else None,
            )
            self.simulators[name] = simulator
            port = self.options.registry_port if n == 0 else 0
            server = registry_server.serve(simulator, HOST, port)[0]
            self._servers.append(server)
            if grpc:
                from devstack import registry_grpc

                served = registry_grpc.serve(simulator, HOST, 0)
                self._servers.append(served)
                targets[name] = RegistryTarget(target=served.target, tls=False, queries=True)
            else:
                targets[name] = RegistryTarget(target=server.url, queries=config.queries)
        for name, simulator in self.simulators.items():
            simulator.federate(name, self.simulators)
        self._registry = self._servers[0]
        first = next(iter(targets.values()))
        self.registry_target = first.target or ""
        return Settings(
            registry="grpc" if grpc else "http",
            registry_url=None if grpc else first.target,
            registry_grpc_target=first.target if grpc else None,
            registry_grpc_tls=False,
            registry_queries=first.queries,
            registry_name=next(iter(targets)),
            registries=targets,
            grid_area_registries=areas,
            matching_boundary={"DK": frozenset(areas)},
            chroniclers=chroniclers,
            **common,
        )

    def _serve_chronicler(self) -> dict:
        """The simulated chronicler of `chronicler_areas`, over gRPC: area -> its settings."""
        if not self.options.chronicler_areas:
            return {}
        import base64

        from chalicelib.registry.sandbox.chronicler import SimulatedChronicler
        from chalicelib.settings import ChroniclerTarget
        from devstack.chronicler_grpc import ChroniclerGrpcServer

        self.chronicler = ChroniclerGrpcServer(SimulatedChronicler(), HOST, 0)
        key = base64.b64encode(self.chronicler.chronicler.public_key).decode()
        named = ChroniclerTarget(target=self.chronicler.target, tls=False, signer_keys=(key,))
        return {area: named for area in self.options.chronicler_areas}

    def _moto_server(self, service: str) -> str:
        process, url = motoserver.start(HOST, free_port())
        self._processes.append(process)
        self.moto_pids[service] = process.pid
        return url

    def _serve_api(self) -> None:
        from chalice.local import ChaliceRequestHandler, ThreadedHTTPServer

        from devstack import gateway

        # One line per request drowns everything else a developer wants to see: only with
        # --verbose, and then on stdout, apart from the log lines (stderr).
        ChaliceRequestHandler.log_message = (
            _access_line if self.options.log_requests else lambda *_args, **_kwargs: None
        )
        # socketserver listens with a backlog of 5: a sixth client connecting at the same
        # moment has its SYN dropped and waits a second to retry.
        ThreadedHTTPServer.request_queue_size = 128
        server = gateway.local_server(
            self.app_module.app, HOST, self.options.port, getattr(self, "ops_page", None)
        )
        server.server.daemon_threads = True
        self._api = server
        self._thread(server.server.serve_forever, "api")

    def _thread(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _tick(self) -> None:
        while not self._stop.wait(self.options.reconcile_every_s):
            try:
                self.reconcile()
            except Exception as exc:  # keep ticking: the next pass retries whatever failed
                log.exception("a reconciler pass failed")
                if getattr(self, "ops_page", None) is not None:
                    self.ops_page.note_failed_pass(exc)

    def reconcile(self) -> dict:
        """One pass, through the same handler as the deployed schedule."""
        now = datetime.now(UTC).isoformat()
        report = self.app_module.reconciler(
            {
                "version": "0",
                "id": "local",
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": "000000000000",
                "time": now,
                "region": self.settings.region,
                "resources": [],
                "detail": {},
            },
            None,
        )
        if getattr(self, "ops_page", None) is not None:
            self.ops_page.note_pass(report)
        return report

    # --- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        for poller in self.pollers:
            poller.stop()
        if hasattr(self, "_api"):
            self._api.server.shutdown()
            self._api.server.server_close()
        for server in self._servers:  # a federation's
            if hasattr(server, "shutdown"):
                server.shutdown()
                server.server_close()
            else:
                server.stop()
        if hasattr(self, "_registry") and not self._servers:
            self._registry.shutdown()
            self._registry.server_close()
        if hasattr(self, "_grpc"):
            self._grpc.stop()
        if hasattr(self, "chronicler"):
            self.chronicler.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        if hasattr(self, "app_module"):
            self.app_module.use_services(None)
