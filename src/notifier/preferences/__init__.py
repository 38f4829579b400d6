"""Recipient preferences: opt-outs per channel and type, and signed unsubscribe links."""
