"""One module per CLI command. Every module here that defines ``register(app)`` is added by ``varbench.cli``.

A command module stays thin: parse options (``varbench.cli.common``), make one library call, print or save.
"""
