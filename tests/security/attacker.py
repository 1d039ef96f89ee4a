"""The code an attacker ships in a service (or a PR preview): an HTTP app that tries every escape.

Served as `app.py` by every service of the security deployment. `GET /env` answers with its own
`/proc/self/environ`; `GET /probe?state=<state dir>&gateway=<port>&victim=<victim replica dir>`
tries, from inside its replica, to read and write the state directory, to see other processes, to
reach the gateway and a neighbour directly and through the egress proxy, and answers with what
happened (an outcome string per attempt: "ok ..." or the error). Only loopback and unix-socket
targets are ever tried: tests never send a packet to another address.
"""

from __future__ import annotations

APP = r'''
import json, os, socket, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def outcome(fn):
    try:
        return "ok " + str(fn())[:200]
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:200]


def read(path):
    with open(path, "rb") as f:
        return len(f.read())


def write(path):
    with open(path, "w") as f:
        f.write('{"kind": "wake", "pr": 1, "pull_request": {"fork": false}}')
    return "written"


def connect_tcp(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        return "connected"


def connect_unix(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(path)
        return "connected"


def via_proxy(raw):
    proxy = os.environ.get("HTTP_PROXY", "")
    host, _, port = proxy.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(raw.encode())
        return s.recv(4096).split(b"\r\n")[0].decode()


def foreign_environs():
    """pids visible here whose environ names another replica (or is unreadable for another reason)."""
    me = os.environ.get("TIDEGATE_REPLICA")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            names = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"TIDEGATE_REPLICA=")]
            if names and names[0] != me:
                found.append(names[0])
    return found


def probe(q):
    state, gateway, victim = q["state"], int(q["gateway"]), q["victim"]
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    cmdlines = []
    for pid in pids:
        try:
            cmdlines.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return {
        "cmdlines": cmdlines,
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "pids": pids,
        "foreign_environs": foreign_environs(),
        "read_tokens": outcome(lambda: read(os.path.join(state, "tokens.json"))),
        "read_state": outcome(lambda: read(os.path.join(state, "state.json"))),
        "read_journal": outcome(lambda: read(os.path.join(state, "journal.jsonl"))),
        "list_state": outcome(lambda: os.listdir(state)),
        "list_victim": outcome(lambda: os.listdir(victim)),
        "write_signal": outcome(lambda: write(os.path.join(state, "signals", "forged.json"))),
        "write_home": outcome(lambda: write(os.path.join(os.environ["HOME"], "x.json"))),
        "write_tmp": outcome(lambda: write("/tmp/x.json")),
        "write_work": outcome(lambda: write("x.json")),
        "write_usr": outcome(lambda: write("/usr/x.json")),
        "write_etc": outcome(lambda: write("/etc/x.json")),
        "read_shadow": outcome(lambda: read("/etc/shadow")),
        "list_root": outcome(lambda: os.listdir("/root")),
        "gateway_direct": outcome(lambda: connect_tcp(gateway)),
        "victim_socket": outcome(lambda: connect_unix(os.path.join(victim, "http.sock"))),
        "gateway_connect": outcome(lambda: via_proxy(f"CONNECT 127.0.0.1:{gateway} HTTP/1.1\r\nHost: x\r\n\r\n")),
        "gateway_get": outcome(lambda: via_proxy(
            f"GET http://127.0.0.1:{gateway}/services/victim/ HTTP/1.1\r\nHost: victim\r\n\r\n")),
        "gateway_by_name": outcome(lambda: via_proxy(f"CONNECT localhost:{gateway} HTTP/1.1\r\nHost: x\r\n\r\n")),
        "gateway_v4_mapped": outcome(lambda: via_proxy(
            f"CONNECT [::ffff:127.0.0.1]:{gateway} HTTP/1.1\r\nHost: x\r\n\r\n")),
        "gateway_v6": outcome(lambda: via_proxy(f"CONNECT [::1]:{gateway} HTTP/1.1\r\nHost: x\r\n\r\n")),
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.endswith("/env"):
            raw = open("/proc/self/environ", "rb").read().split(b"\0")
            body = dict(e.decode().split("=", 1) for e in raw if b"=" in e)
        elif url.path.endswith("/probe"):
            body = probe(dict(urllib.parse.parse_qsl(url.query)))
        else:
            body = {"replica": os.environ.get("TIDEGATE_REPLICA")}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''
