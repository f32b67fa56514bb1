"""Shepherd: triggers Buildbucket builds and shepherds each one to its end."""
