"""The ways in: the ``fedsim`` command line, ``fedsim compare``, the partition report and the Flower
app that ``flwr run .`` starts.
"""
