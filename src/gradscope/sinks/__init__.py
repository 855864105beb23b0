"""Sinks receive what the RunWriter writes, on the writer thread, after the run directory has it.

A sink has ``write_manifest(manifest: dict)``, ``write_chunk(arrays: dict[str, np.ndarray])`` (the
same arrays as a chunk file: ``step`` and ``kind/metric`` / ``scalar/name``), ``write_events(list)``
and ``close()``.
"""
