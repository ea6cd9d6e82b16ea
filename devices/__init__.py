"""Targets, cross-compilers and TVM sessions (local, loopback RPC, tracker, emulator)."""
