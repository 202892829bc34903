"""The teaching lab's figures: ``python -m sslzoo.viz {attention,embeddings,dynamics,cards} ...``.

Each figure has its own module and a function that returns a matplotlib
``Figure`` (drawn without pyplot, so no display is needed); ``__main__`` turns
command-line ``key=value`` options into calls and writes PNG files.
"""
