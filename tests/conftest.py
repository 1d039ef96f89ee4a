"""Suite-wide settings: no traffic to the Hugging Face Hub, and bytecode caching on.

A TGI route without `chat_template` makes the gateway fetch the model's tokenizer_config.json with
huggingface_hub. Tests that exercise that path point the resolver at a local stand-in; this sets
the library's default endpoint to a closed loopback port before anything imports it (it reads the
variable at import), so a test that forgets gets a fast, clear failure instead of network traffic.
Subprocesses (`tidegate up`, gateway workers) inherit it.

Bytecode: with PYTHONDONTWRITEBYTECODE set (some CI and sandbox environments set it), pytest
rewrites the asserts of every test module again in each worker of each run (~8 s of CPU per
worker), and every `tidegate` / gateway / example-server subprocess a test starts compiles this
repository's modules from source again. The caches land in `__pycache__/` (git-ignored), so the
suite turns writing back on for itself and for the processes it starts.
"""

from __future__ import annotations

import os
import sys

os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

sys.dont_write_bytecode = False  # read by pytest's assert rewriter when it imports each test module
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
