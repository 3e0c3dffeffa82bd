"""Frontends: other formats → lincompile IR."""
