"""Dialog persistence: the store interface (``base``), the SQLite driver (``sqlite``), the
writer process (``writer``) and the pipeline that holds messages until their changes are
durable (``persistence``)."""
