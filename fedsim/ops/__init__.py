"""Processes and signals: Ctrl-C as a stop request, reaping Ray's processes, quiet Flower and Ray logs.
"""
