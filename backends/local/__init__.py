"""The embedded local backend: replicas as sandboxed processes on this machine (backend), how they
are spawned (spawn, relay, streams, venv_build, egress), what fits here (fit), how they are confined (sandbox: the bubblewrap argv; confine:
handing them their files, the egress policy), the host's tools (host), their work dirs (layout,
proc), how they are stopped for good (stop) and what their records say (status).

relay.py (the supervisor), streams.py (its byte pipes), venv_build.py (the spec's virtualenv),
egress.py and sandbox.py also run by path inside the supervisor (relay.py as a standalone script),
so they import nothing of ours but each other: imported as `backends.local.<name>` from the
package, as plain sibling modules when the supervisor runs (`if __package__:` chooses).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("backend",)
