"""Loss functions, one concept per file, each citing its paper."""
