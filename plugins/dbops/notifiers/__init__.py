"""Notification delivery: log, email (SMTP provider), Slack (incoming-webhook provider)."""
