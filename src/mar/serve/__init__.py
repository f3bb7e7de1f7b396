"""``mar serve``: an HTTP inference server with a web page (FastAPI + uvicorn).

:mod:`.predictor` loads the model and decodes uploads, :mod:`.batcher` groups requests
into model calls, :mod:`.metrics` counts, :mod:`.app` holds the routes and limits;
the command is :mod:`mar.cli.serve`. Needs the ``serve`` extra: ``pip install -e ".[serve]"``.
"""
