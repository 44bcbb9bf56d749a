"""What a node owns: backbones (CPU memfd, CUDA arena), their integrity, the memory ledger."""
