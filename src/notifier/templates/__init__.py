"""Message templates: the sandboxed renderer, the built-ins and each tenant's own."""
