"""API keys: their format, storage, the request guard, rate limits and the admin commands."""
