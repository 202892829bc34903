"""Evaluation of frozen backbones (kNN, linear probe)."""
