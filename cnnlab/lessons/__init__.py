"""Small, dependency-light lesson helpers used by the course demos (``cnnlab.demo``).

Modules here are pure Python at import time (torch is imported lazily inside
functions) so that the demos' ``--help`` stays instant.
"""
