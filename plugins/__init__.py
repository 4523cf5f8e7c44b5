"""streamfuse's built-in plugins: what touches hardware or heavy libraries.

Installed as the ``streamfuse_plugins`` package and found through entry points, so nothing
here is imported until a source, model or backend is actually asked for.
"""
