"""Where the tiers find each other: Redis (instances with a TTL, device routes)
and the consistent-hash ring that says which im instance owns a conversation."""
