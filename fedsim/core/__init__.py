"""The round and what the server and its clients share: the round loop, the wire protocol, the run's
files for workers (spec, partition index), the recipe, round extensions, sampling, checkpoints.
"""
