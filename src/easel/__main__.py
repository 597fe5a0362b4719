"""``python -m easel``: the ``easel`` command."""

from easel.cli import app

app()
