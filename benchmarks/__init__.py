"""scalewatch benchmarks: what monitoring costs, measured against a run without it.

Run all of them with ``make bench`` (or ``python -m benchmarks.run``); see
``benchmarks/README.md``. Nothing here is imported by the library or the tests.
"""
