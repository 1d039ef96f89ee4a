"""The embedded local backend: replicas as sandboxed processes on this machine (backend), how they
are spawned (spawn, relay, egress), how they are confined (sandbox: the bubblewrap argv; confine:
handing them their files, the egress policy), the host's tools (host), their work dirs (layout,
proc) and what their records say (status).

relay.py, egress.py and sandbox.py also run by path inside the supervisor (relay.py as a standalone
script), so they import nothing of ours.
"""
