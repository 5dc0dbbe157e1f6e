"""MongoDB targets (``engine: mongodb``): dump and verification restore in mongodump's layout, retention
purges by collection, maintenance, and the server-command rule source of the alerts."""
