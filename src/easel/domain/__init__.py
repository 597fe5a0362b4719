"""The pure rules of Easel: no I/O, no framework.

The model catalog, request parsing and validation, prompts and templates, the task state
machine, the error tree, text and image rules, ETA arithmetic. Everything else imports from
here; this package imports nothing of Easel's outside it.
"""
