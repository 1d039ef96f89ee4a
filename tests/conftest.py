"""Suite-wide guard: nothing a test runs may reach the Hugging Face Hub (or any host off loopback).

A TGI route without `chat_template` makes the gateway fetch the model's tokenizer_config.json with
huggingface_hub. Tests that exercise that path point the resolver at a local stand-in; this sets
the library's default endpoint to a closed loopback port before anything imports it (it reads the
variable at import), so a test that forgets gets a fast, clear failure instead of network traffic.
Subprocesses (`tidegate up`, gateway workers) inherit it.
"""

from __future__ import annotations

import os

os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
