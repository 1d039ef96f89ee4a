"""What the cloud backends share: the launch and describe helpers (common), the offer catalog
(catalog, with its shipped data/), the orphan sweeper (orphans) and the VM startup script (startup).
"""
