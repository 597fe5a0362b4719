"""The use cases the API and the background loops call: submit, view and cancel tasks, upload
tokens, webhook delivery, event streams, retention. HTTP-free; they reach the database only
through :mod:`easel.store`, files only through :mod:`easel.storage`.
"""
