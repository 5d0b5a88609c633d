"""The wire protocol: message set, framing codec (the only msgpack user) and the sans-IO session."""
