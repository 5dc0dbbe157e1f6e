"""Alert evaluation (issue 4): rule state like Alertmanager's, notified once per transition."""
