"""A process that campaigns on an etcd prefix and, while it leads, writes a tick every 0.1 s through
the fenced store. It prints one JSON line per event (leading, wrote, refused, standby) so a test
can pause (SIGSTOP), resume and kill it and see what it did. Run: python -m tests.etcd.leader_proc URL NODE TTL
"""

from __future__ import annotations

import json
import sys
import threading
import time

from reconciler.state.errors import StateError
from reconciler.state.etcd_store import EtcdStore, FencedOut
from reconciler.state.leader import Leadership
from tidegate.etcd import EtcdClient, EtcdLocation


def say(event: str, **data: object) -> None:
    print(json.dumps({"event": event, "at": time.time(), **data}), flush=True)


def main() -> None:
    url, node, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = EtcdClient(EtcdLocation.parse(url))
    leadership = Leadership(client, node=node, ttl=ttl, retry=0.2)
    stop = threading.Event()
    while True:
        say("standby")
        leadership.campaign(stop)
        fence = leadership.fence
        say("leading", revision=fence.revision if fence else None)
        store = EtcdStore(client, fence)
        n = 0
        while not leadership.lost.is_set():
            n += 1
            try:
                store.put(f"ticks/{node}", f"{node} {n}".encode())
                say("wrote", n=n)
            except FencedOut as e:
                say("refused", n=n, error=str(e))
                break
            except StateError as e:
                say("error", n=n, error=str(e))
            time.sleep(0.1)
        leadership.resign()


if __name__ == "__main__":
    main()
