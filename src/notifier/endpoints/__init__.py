"""Webhook endpoints each tenant manages: URL, filter, headers, secrets with rotation,
auto-disable, attempt log, test sends and recovery; and each tenant's signing secret."""
