"""Alerting: rule packs, evaluation, the alert state machine, silences, and delivery of notifications."""
