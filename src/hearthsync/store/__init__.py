"""Durable storage: SQLite update log and snapshots, group commit, vector memory."""
