"""specroute: typed specs, training and verification for conditional depth routing."""

__version__ = "0.1.0"
