"""Training on several processes and machines through existing engines: the launcher (torchrun / accelerate launch,
several nodes), cluster job templates, FSDP2 on CPU, and resuming a checkpoint on another process count or layout."""
