"""Broker transports: kombu's, with the message-loss windows closed (``transport.redis``)."""
