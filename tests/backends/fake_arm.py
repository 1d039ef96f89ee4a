"""A small Azure Resource Manager endpoint on 127.0.0.1 for the Azure backend tests.

It implements exactly the ARM calls `backends.azure.backend` makes, with ARM's long-running-operation
protocol: PUT answers 201/200 with `Azure-AsyncOperation` (polled until Succeeded or Failed),
DELETE answers 202 with `Location` (polled until 200) or 204 when there is nothing to delete.
Resources are kept in memory by lowercased path. Faults are injected per method + path fragment;
a VM size can be made to fail with AllocationFailed (no capacity) through the async operation.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

RUNNING = [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]


@dataclass
class Fault:
    method: str
    fragment: str
    status: int
    code: str
    times: int = 1


@dataclass
class Operation:
    polls_left: int
    failure: dict[str, str] | None = None
    done_at: float | None = None  # a VM boot: InProgress until then, however often it is polled


class FakeArm:
    def __init__(self, *, polls: int = 1) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, Operation] = {}
        self.faults: list[Fault] = []
        # VM sizes ("size" or "location/size") whose creation fails with AllocationFailed
        self.no_capacity: set[str] = set()
        self.skus: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.polls = polls
        # Seconds a VM takes to provision (ARM keeps going whether or not anyone polls): GET shows
        # it Creating meanwhile, and its operation answers InProgress.
        self.vm_create_seconds = 0.0
        self._creating: dict[str, float] = {}  # VM path -> monotonic time it is provisioned
        # Seconds a VM takes to delete: GET shows it Deleting meanwhile, its operation answers
        # InProgress, and its NIC cannot be deleted yet (NicInUse, as ARM answers).
        self.vm_delete_seconds = 0.0
        self._deleting: dict[str, float] = {}  # VM path -> monotonic time it is gone
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def start(self) -> FakeArm:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # ---- test helpers ------------------------------------------------------------------------
    def fail(self, method: str, fragment: str, status: int, code: str, times: int = 1) -> None:
        self.faults.append(Fault(method, fragment.lower(), status, code, times))

    def put_resource(self, path: str, body: dict[str, Any]) -> None:
        with self.lock:
            self._store(path, body)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for k, r in self.resources.items() if f"/{kind.lower()}/" in k]

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p in self.requests if m == method and fragment.lower() in p.lower())

    # ---- the model -------------------------------------------------------------------------------
    def _store(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        parts = path.strip("/").split("/")
        resource = {**body, "id": path, "name": parts[-1], "type": "/".join(parts[-4:-2:2])}
        props = resource.setdefault("properties", {})
        props["provisioningState"] = "Succeeded"
        low = path.lower()
        if "/publicipaddresses/" in low:
            props["ipAddress"] = "127.0.0.1"
        if "/networkinterfaces/" in low:
            for i, cfg in enumerate(props.get("ipConfigurations", [])):
                cfg["id"] = f"{path}/ipConfigurations/{cfg.get('name', i)}"
                cfg.setdefault("properties", {})["privateIPAddress"] = f"10.77.0.{4 + i}"
        if "/virtualnetworks/" in low:
            for subnet in props.get("subnets", []):
                subnet["id"] = f"{path}/subnets/{subnet['name']}"
                subnet.setdefault("properties", {})["provisioningState"] = "Succeeded"
        if "/virtualmachines/" in low:
            props["vmId"] = str(uuid.uuid4())
        self.resources[low] = resource
        return resource

    def _get(self, path: str, expand: bool) -> dict[str, Any] | None:
        low = path.lower()
        m = re.match(r"(.*/virtualnetworks/[^/]+)/subnets/([^/]+)$", low)
        if m:
            vnet = self.resources.get(m.group(1))
            subnets = vnet["properties"].get("subnets", []) if vnet else []
            return next((s for s in subnets if s["name"].lower() == m.group(2)), None)
        resource = self.resources.get(low)
        if resource is None:
            return None
        out = json.loads(json.dumps(resource))
        if time.monotonic() < self._creating.get(low, 0.0):
            out["properties"]["provisioningState"] = "Creating"
        if low in self._deleting:
            out["properties"]["provisioningState"] = "Deleting"
        if expand and "/virtualmachines/" in low:
            state = out["properties"]["provisioningState"]
            statuses = RUNNING if state == "Succeeded" else [{"code": f"ProvisioningState/{state.lower()}"}]
            out["properties"]["instanceView"] = {"statuses": statuses}
        return out

    def _fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and fault.fragment in path.lower() and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    def _operation(self, failure: dict[str, str] | None = None, done_at: float | None = None) -> str:
        op = uuid.uuid4().hex
        self.operations[op] = Operation(self.polls, failure, done_at)
        return f"{self.url}/fake/operations/{op}"

    def _expire(self) -> None:
        now = time.monotonic()
        for path, gone_at in list(self._deleting.items()):
            if now >= gone_at:
                self.resources.pop(path, None)
                del self._deleting[path]

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        split = urlsplit(raw_path)
        path, query = split.path, split.query
        with self.lock:
            self._expire()
            self.requests.append((method, path))
            fault = self._fault(method, path)
            if fault is not None:
                error = {"error": {"code": fault.code, "message": f"injected {fault.code}"}}
                return fault.status, {"Retry-After": "0"}, error
            if path.startswith("/fake/operations/"):
                return self._poll(path.rsplit("/", 1)[1], "kind=location" in query)
            if method == "GET" and path.lower().endswith("/providers/microsoft.compute/skus"):
                return 200, {}, {"value": self.skus}
            if method == "GET" and re.search(r"/resourcegroups/[^/]+/providers/[^/]+/[^/]+$", path.lower()):
                prefix = path.lower() + "/"  # a collection: VMs, NICs, public IPs, NSGs of the group
                listed = [
                    self._get(k, False)
                    for k in self.resources
                    if k.startswith(prefix) and "/" not in k[len(prefix) :]
                ]
                return 200, {}, {"value": listed}
            if method == "GET":
                found = self._get(path, "instanceview" in query.lower())
                if found is None:
                    return 404, {}, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}
                return 200, {}, found
            if method == "PUT":
                existed = path.lower() in self.resources
                resource = self._store(path, body or {})
                failure = None
                size = resource["properties"].get("hardwareProfile", {}).get("vmSize")
                if size in self.no_capacity or f"{resource.get('location')}/{size}" in self.no_capacity:
                    resource["properties"]["provisioningState"] = "Failed"
                    failure = {"code": "AllocationFailed", "message": f"no capacity for {size}"}
                shown = json.loads(json.dumps(resource))
                shown["properties"]["provisioningState"] = "Updating" if existed else "Creating"
                done_at = None
                if "/virtualmachines/" in path.lower() and self.vm_create_seconds and failure is None:
                    done_at = time.monotonic() + self.vm_create_seconds
                    self._creating[path.lower()] = done_at
                headers = {"Azure-AsyncOperation": self._operation(failure, done_at)}
                return (200 if existed else 201), headers, shown
            if method == "DELETE":
                low = path.lower()
                if low not in self.resources:
                    return 204, {}, None
                if low.endswith("-nic") and "/networkinterfaces/" in low:
                    vm = low.replace("/microsoft.network/networkinterfaces/", "/microsoft.compute/virtualmachines/")[:-4]
                    if vm in self.resources:
                        error = {"error": {"code": "NicInUse", "message": f"{path} is attached to a VM"}}
                        return 400, {}, error
                if "/virtualmachines/" in low and self.vm_delete_seconds:
                    gone_at = self._deleting.setdefault(low, time.monotonic() + self.vm_delete_seconds)
                    return 202, {"Location": self._operation(done_at=gone_at) + "?kind=location"}, None
                self.resources.pop(low)
                return 202, {"Location": self._operation() + "?kind=location"}, None
        return 405, {}, {"error": {"code": "MethodNotAllowed", "message": method}}

    def _poll(self, op_id: str, location: bool) -> tuple[int, dict[str, str], Any]:
        op = self.operations.get(op_id)
        if op is None:
            return 404, {}, {"error": {"code": "NotFound", "message": "no such operation"}}
        if op.done_at is not None and time.monotonic() < op.done_at:
            return (202, {}, None) if location else (200, {}, {"status": "InProgress"})
        if op.polls_left > 0:
            op.polls_left -= 1
            return (202, {}, None) if location else (200, {}, {"status": "InProgress"})
        if location:
            return 200, {}, None
        if op.failure is not None:
            return 200, {}, {"status": "Failed", "error": op.failure}
        return 200, {}, {"status": "Succeeded"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        arm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, headers, payload = arm.handle(method, self.path, body)
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
