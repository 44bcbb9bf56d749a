"""The backbone's wire formats and their readers, shared by the node (the writer) and the
runtimes (readers): safetensors checkpoints, the sealed CPU image, the exported CUDA arena.
Standard library at import; torch only inside the functions that build tensors."""
