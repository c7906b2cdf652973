"""A local evaluate metric module (loaded by path; see the parent package)."""
