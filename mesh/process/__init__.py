"""A pod as processes: settings, the main process that wires the parts, extra serving processes."""
