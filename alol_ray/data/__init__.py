"""Offline data: readers, source formats, validation and canonical rows."""
