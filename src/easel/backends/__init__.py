"""Image backends behind one port (``base``), found by kind (``registry``)."""
