"""Task-specific data, evaluation and output formats built on the compression toolkit.

* :mod:`compactlm.tasks.triples` — relational triple extraction measured on seen and unseen triples.
"""
