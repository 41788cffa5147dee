"""Methods: what a family of strategies needs beyond the round loop.

Most strategies exchange model weights (:class:`~fedsim.methods.base.Method`, the default);
a method whose strategy exchanges something else, or needs more around the rounds, subclasses
it next to its own settings (``latent_distill/``) and registers in
:data:`fedsim.methods.registry.METHODS`. Run modes (:mod:`.modes`), server-side evaluation
(:mod:`.evaluation`) and the DP strategies' privacy accounting (``privacy/``) live here too.
"""
