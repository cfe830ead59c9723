"""libvirt: the connection and its events (connection.py), domain XML (domxml.py)."""
