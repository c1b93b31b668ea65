"""The HTTP surface: API under /api/v1/, the dashboard, health and metrics."""
