"""The vector generators, one module per vector file (``rejected.json`` in four).

Run through ``../generate.py``, which puts this directory's parent on
``sys.path``. Each ``build_*`` returns one JSON document. Rules: every value
comes from fixed seeds and the deterministic random source in ``common``
(never ``os.urandom`` or the clock), so two runs write identical files.
"""
