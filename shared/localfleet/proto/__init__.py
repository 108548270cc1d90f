"""Generated from protos/backend.proto by `nox -s protos`; do not edit."""
