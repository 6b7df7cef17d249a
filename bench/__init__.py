"""`make bench`: chatgate measured against its own ceiling and a fastapi-users peer."""
