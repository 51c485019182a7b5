"""The stream daemon (``daemon run``): Kafka upload jobs in, one verdict per job and engine in SQL out.

One stage per module: ``jobs`` (the versioned message), ``fetch`` (media behind path and URL guards),
``prepare`` (fetch + decode + faces + pixels, in worker threads), ``batching`` (engine micro-batches
across jobs), ``persist`` (SQL, dead letters, result events), ``offsets`` (what may be committed),
``consumer`` (Kafka at the edge), ``runner`` (the main loop and its drain), ``health`` and ``metrics``.
"""
