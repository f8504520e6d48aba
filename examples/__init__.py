"""The examples, also importable as ``examples.<name>``: the tests run each one's ``main()`` and
benchmark F reuses ``embed_minilm``.
"""
