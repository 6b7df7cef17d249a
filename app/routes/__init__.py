"""HTTP routes, thin: parse, call, shape."""
