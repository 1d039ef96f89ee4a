"""Pull-request previews: the pure decision (decision), pull-request facts from GitHub (github),
PR refs checked out as sources (pr_source), and their wiring into the engine and the loop.
"""
