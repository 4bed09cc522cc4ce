"""The ``arker`` command line, built on the SDK (one module per command group)."""
