"""Subcommands of the ``kvinfo`` CLI.

Each module has ``add_arguments(parser)`` and ``run(args) -> int``.
"""
