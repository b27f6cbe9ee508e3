"""Data: the one record type every stage reads and writes, its files, the field mappings from
public datasets to records (sources), and the generated demo task.

Nothing here loads a model; every other stage builds on it."""
