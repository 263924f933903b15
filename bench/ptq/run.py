"""PTQ benchmark runner on ``smollm2-135m`` (issue 3). Work in progress: see ``records.py``.

The record format of ``bench/results/ptq.json`` is defined in ``bench/ptq/records.py``
(stdlib only; peers running in another venv import it by path and call ``append_record``).
"""
