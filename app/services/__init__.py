"""Things chatgate talks to that are not its database: the assistant providers."""
