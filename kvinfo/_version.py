"""Single source of the kvinfo version (read by pyproject and written into every file)."""

__version__ = "0.1.0"
