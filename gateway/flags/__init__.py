"""Local feature-flag evaluation: definitions polled from the upstream, answered without a round trip."""
