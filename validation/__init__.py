"""Contracts of the silver and gold tables: one pandera schema per table, every check named."""
