"""Pieces both the API and the worker use: settings, database models, object store, queue."""
