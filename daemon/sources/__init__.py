"""Job sources behind one interface (``base.JobSource``) and their registry (``base.SOURCES``): ``files``
(``daemon scan``) and ``kafka`` (``daemon run``, in ``daemon.broker``)."""
