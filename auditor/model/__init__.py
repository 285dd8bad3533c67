"""The checkpoint and what is fed to it: loading (folders, GGUF, the demo), architectures, config checks, shipped resources, reference texts, edit requests."""
