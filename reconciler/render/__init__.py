"""Plans rendered for people: terminal text and JSON (plan_output) and the markdown posted on pull
requests (plan_markdown). Pure: values in, text out.
"""
