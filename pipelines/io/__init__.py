"""The I/O boundary: the only package that reads sources and reads or writes Iceberg tables."""
