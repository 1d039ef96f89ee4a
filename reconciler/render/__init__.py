"""Plans rendered for people: terminal text and JSON (plan_output) and the markdown posted on pull
requests (plan_markdown). Pure: values in, text out.
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("plan_markdown", "plan_output")
