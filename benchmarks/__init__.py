"""``crosslmm-edge bench``: speed and memory against the peers and the hardware limit.

Suites live one per module (``suite_*.py``); every figure is a median of
interleaved repeats and every ratio has its baseline measured in the same run,
on the machine ``machine.py`` names and measures. Never part of the test
suite: the tests time nothing. Standalone scripts from earlier issues
(``cache_reuse.py``, ``export_2b.py``, ``kv_interface.py``) live beside them.
"""
