"""tidings: live updates that survive every disconnect."""
