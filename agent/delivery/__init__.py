"""Real-time delivery to organizations: subscriptions, filters, a durable outbox and signed webhooks."""
