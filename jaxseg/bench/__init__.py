"""Benchmarks: parameters, MACs/FLOPs and throughput (``jaxseg bench``)."""
