"""The archive: every published surface into hive-partitioned Parquet files (docs/archive.md)."""
