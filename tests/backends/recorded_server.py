"""A recorded-response server on 127.0.0.1 for the catalog refresh tests: the AWS Price List API
(`AWSPriceListService.GetProducts`, JSON 1.1 over POST) and Azure's Retail Prices API (GET with
OData `$filter`, paged by `NextPageLink`), answering from the JSON fixtures in fixtures/.

Each recorded exchange names the request it answers (region, page token or `$skip`); a request no
exchange matches is a 400 in the API's own error shape, so a client that asks for something else
than what was recorded fails loudly. Every request is kept in `requests` for assertions.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures"
AZURE_HOST = "https://prices.azure.com:443"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class RecordedServer:
    def __init__(self) -> None:
        self.pricing = load_fixture("aws_pricing_get_products.json")["exchanges"]
        self.retail = load_fixture("azure_retail_prices.json")["exchanges"]
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> RecordedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def get_products(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        filters = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
        with self.lock:
            self.requests.append({"api": "pricing", "filters": filters, "token": body.get("NextToken")})
        for exchange in self.pricing:
            want = exchange["request"]
            if want["regionCode"] == filters.get("regionCode") and want["NextToken"] == body.get("NextToken"):
                return 200, exchange["response"]
        return 400, {
            "__type": "InvalidParameterException",
            "message": f"not recorded: {filters} {body.get('NextToken')}",
        }

    def retail_prices(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        odata = query.get("$filter", [""])[0]
        skip = int(query.get("$skip", ["0"])[0])
        with self.lock:
            self.requests.append(
                {"api": "retail", "filter": odata, "skip": skip, "version": query.get("api-version")}
            )
        region = re.search(r"armRegionName eq '([^']+)'", odata)
        for exchange in self.retail:
            want = exchange["request"]
            if region and want["armRegionName"] == region.group(1) and want["skip"] == skip:
                page = dict(exchange["response"])
                if page.get("NextPageLink"):  # recorded against Azure: point the link back here
                    page["NextPageLink"] = page["NextPageLink"].replace(AZURE_HOST, self.url)
                return 200, page
        return 400, {"Error": {"Code": "BadRequest", "Message": f"not recorded: {odata} skip {skip}"}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any], content_type: str) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.headers.get("X-Amz-Target") != "AWSPriceListService.GetProducts":
                    self._reply(400, {"__type": "UnknownOperationException"}, "application/x-amz-json-1.1")
                    return
                status, reply = owner.get_products(body)
                self._reply(status, reply, "application/x-amz-json-1.1")

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/api/retail/prices":
                    self._reply(404, {"Error": {"Code": "NotFound"}}, "application/json")
                    return
                status, reply = owner.retail_prices(parse_qs(parts.query))
                self._reply(status, reply, "application/json")

        return Handler
