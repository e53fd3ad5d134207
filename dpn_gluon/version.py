"""The package version: one place, below every module that records it (ONNX producer_version)."""
__version__ = "0.1.0"
