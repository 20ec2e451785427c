"""The front doors: the ``raysquad`` CLI (the composition root) and, later, the HTTP app."""
