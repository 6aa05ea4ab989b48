"""Benchmarks: the service as a real process under bounded load, against bare ONNX Runtime and the
classical denoisers, in one run on one machine. ``python -m bench.run --help``."""
