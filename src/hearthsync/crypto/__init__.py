"""Device identity and (later) certificates, scope keys and envelopes."""
