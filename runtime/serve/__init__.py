"""``crosslmm-edge serve``: the runtime behind a local, OpenAI-compatible HTTP API.

One worker thread owns the pipeline (``engine.py``); the ASGI app
(``app.py``) validates requests (``schemas.py``), resolves their video
(``media.py``) and hands them to the worker through a bounded queue. Video
states stay in a byte-bounded LRU cache (``state_cache.py``) keyed like saved
states, and a live source (``live_source.py``) feeds a rolling window.
"""
