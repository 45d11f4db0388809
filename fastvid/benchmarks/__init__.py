"""fastvid.benchmarks"""
