"""Bundles: validating, compiling, archiving, signing and storing proxy configuration."""
