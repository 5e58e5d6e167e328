"""Unit tests that mirror the modules, without sockets."""
