"""What operators watch: ended-call records and live events (``lifecycle``, ``events``),
Prometheus metrics (``metrics``) and the histogram they share (``histogram``)."""
