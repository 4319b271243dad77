"""The pieces of the database log pipeline (db_logger.py puts them together): the daily log file and the
rows a record becomes. No process state here; nothing above core is imported."""
