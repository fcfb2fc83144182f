"""astropt: large observation models of galaxy images."""

__version__ = "0.1.0"
