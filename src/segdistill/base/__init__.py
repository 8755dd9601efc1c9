"""The base layer: what every other layer may use and which imports nothing of segdistill above it
(errors live in :mod:`segdistill.errors`). ``data`` and ``models`` sit on it, ``distill`` on those,
``engine`` on ``distill``, and the commands on top; ``tests/test_layers.py`` enforces the order."""
