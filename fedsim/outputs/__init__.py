"""What a run writes and reads back: the tables' recorder, the run directory, figures, TensorBoard
events, classification metrics, ``load_run``.
"""
