"""The test suites. A package so that tests import their shared helpers as
``tests.kit.<module>`` (the repository root is on ``sys.path``: pyproject's pytest
``pythonpath``)."""
