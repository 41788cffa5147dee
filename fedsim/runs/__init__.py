"""A run from its config to its results: preparation (data, partition, staging folder), the server
side that assembles strategy, method, extensions and executor, the executors and Flower's runtime.
"""
