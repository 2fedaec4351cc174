"""Online scoring: the request schema, online feature reads, the served CoFARS path and the HTTP service."""
