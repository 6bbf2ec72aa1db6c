"""The iris-tfx command, above pipeline/ and serving/: one module per command group (main.py assembles them)."""
