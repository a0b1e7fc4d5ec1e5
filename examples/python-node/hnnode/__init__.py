"""hnnode: a minimal third-party HearthNet node (conformance tier Bronze).

Built only from `protocol/` (proto files, spec, vectors, decisions); see
README.md. Run with `python -m hnnode --port PORT --data-dir DIR` (or run.sh).
"""
