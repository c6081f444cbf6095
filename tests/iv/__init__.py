"""Tests of the implied-vol service (svc_iv)."""
