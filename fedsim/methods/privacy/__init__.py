"""Privacy accounting of the differential-privacy strategies.

:mod:`.settings` holds the ``[privacy]`` section; :mod:`.accounting` the round extension that
reports (epsilon, delta) after every round.
"""
