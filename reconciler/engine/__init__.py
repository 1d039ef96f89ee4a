"""One reconcile pass: desired state -> observe -> plan -> apply, with probes, liveness,
autoscaling, routing targets, and the loop and schedule that run passes.

Pure cores: plan, autoscale, naming. Everything else does the I/O around them.
"""
