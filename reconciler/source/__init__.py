"""Where desired state comes from: a git branch or a watched local tree (checkout), and the
content hashes of the code a service runs (code_files).
"""
