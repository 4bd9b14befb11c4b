"""Stream processors, one module per domain."""
