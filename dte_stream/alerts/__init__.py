"""Alerting: rules evaluated in the twins' keyed state, alert lifecycle, events for integrations."""
