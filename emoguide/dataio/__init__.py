"""Data in and out: media decoding, session inputs, local and object-store paths, and the Parquet tables
that are the pipeline's contract."""
