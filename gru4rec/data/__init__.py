"""Data half: readers (ingest), validation, sessionizing and splitting."""
