"""Embedded execution: a crash-safe job queue in the project directory and local workers."""
