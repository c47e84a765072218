"""Scripts run by the interop venv (.venv-interop/bin/python, aiomoqt 0.5.3 + qh3), never imported by the suite."""
