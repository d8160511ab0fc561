"""Backends: each runs a Plan in one framework."""
