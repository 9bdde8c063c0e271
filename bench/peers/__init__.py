"""The peers the add-on is measured against, as one Pyramid app (see :mod:`.app`)."""
