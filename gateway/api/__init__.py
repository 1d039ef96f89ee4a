"""The OpenAI-compatible API: routing by model, passthrough for `format: openai`, translation for `format: tgi`.

`openai` dispatches `/v1/...`; `tgi` is the pure translation and `chat_template` the pure,
budgeted template rendering; `render` runs renders in worker processes; `templates` finds a
model's chat template; `tgi_chat` does the TGI path's I/O.
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("openai", "render", "templates")
