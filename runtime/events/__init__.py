"""Topic events, their routing and delivery (the event bus), schedules and outbound webhooks."""
