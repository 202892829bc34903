"""sslzoo: a comparative zoo of self-supervised learning methods on one shared core."""

__version__ = "0.1.0"
