"""Webhooks that wake the reconciler (`POST /hooks/github`, `POST /hooks/git`), replays ignored."""
