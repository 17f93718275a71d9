"""Loading FLUX.1 single files without the network, fp8 storage, LoRA adapters and LoRA files."""
