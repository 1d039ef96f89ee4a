"""tidegate's contracts: the wire formats the reconciler, the gateway and the backends all read.

This package imports nothing of the project, so every other package may import it:
- routes: the routes snapshot models (pure values); routes_io reads and publishes routes.json;
- signals: wake-up files dropped into the state directory;
- stats_file: the gateway's per-process request stats the autoscaler reads;
- fsio: atomic file writes (temp file + fsync + os.replace + directory fsync).
"""
