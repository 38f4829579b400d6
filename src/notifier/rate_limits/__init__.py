"""Per-tenant, per-channel delivery rate limits shared by every worker through PostgreSQL."""
