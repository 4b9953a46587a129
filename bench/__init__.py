"""Scripts that measure and record with the library: `python -m bench.NAME --help`."""
