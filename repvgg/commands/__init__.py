"""CLI verbs. Each module here defines ``register(subparsers)``; cli.py discovers them.

A verb is argument parsing plus one call into the library, so everything it does can also be
done from Python.
"""
