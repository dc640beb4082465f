"""gRPC plumbing shared by the tiers: channels with deadlines, servers, health."""
