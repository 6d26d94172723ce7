"""Evaluation: passes over a split (`passes`), the depth breakdown (`breakdown`), figures,
Markdown tables, and the evaluate command's library (`report`)."""
