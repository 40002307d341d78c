"""Test support shared by the tests and the bench scripts: tiny checkpoints (``checkpoints``), hand-laid
artifact pieces (``artifacts``), the reader fuzzer (``fuzzing``; ``bench/fuzz.py`` is its command line).
``tests/`` is on ``sys.path`` under pytest (rootdir conftest); bench scripts insert it themselves."""
