"""``latent-distill``: federated distillation through a latent representation layer.

:mod:`.settings` holds its ``[latent_distill]`` section; :mod:`.method` what the server side
does around the rounds (the transfer set, a server teacher, the per-client views).
"""
