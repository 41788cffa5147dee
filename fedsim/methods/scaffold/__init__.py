"""SCAFFOLD: the server control variate's start, the rules on the config and the honest upload size."""

from .method import ScaffoldMethod

__all__ = ["ScaffoldMethod"]
