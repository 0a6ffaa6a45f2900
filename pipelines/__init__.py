"""Staged batch jobs and the `latte` command line."""
