"""Generated from proto/volstream/v1 by `python -m volstream.codegen`; do not edit."""
