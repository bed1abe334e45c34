"""The REST front end of cake-distill (FastAPI).

Kept free of torch imports on purpose: torch costs ~200 MB of RSS per process, and every check
that needs it (teacher probe, architecture catalogue) runs in a child process (``api.sandbox``).
"""
