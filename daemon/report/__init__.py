"""Evidence a person can look at: a self-contained HTML page per verdict, and an index for a scan.

A page shows the verdict card (label, P(fake), threshold, status and reason code), the engine card (its manifest:
recipe, backend, precision, validation figures), the P(fake) timeline per face track, the most suspicious frames
with every face box laid over them and the crops beside them, tamper-mask overlays, media facts, the decoder and
timings. ``evidence`` gathers it from the verdict store and the media (``media``: re-read only while it is still
there and unchanged), ``images`` and ``plots`` draw it, ``render`` fills the Jinja2 templates, ``pages`` writes
pages and scan reports, ``http`` serves them read-only on the daemon's health port (``report_http``).
"""
