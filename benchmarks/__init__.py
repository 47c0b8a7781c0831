"""Benchmarks: synthesis speed, latency / throughput of the served ensemble, parity."""
