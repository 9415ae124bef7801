"""Reverse-proxy mode: PostHog's flags, assets, remote config and SDK API routes through the gateway."""
