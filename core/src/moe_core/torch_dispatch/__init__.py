"""The always-available token dispatcher: ``torch.distributed`` all-to-all (NCCL on GPUs,
gloo on CPUs). It keeps DeepEP's contract, so DeepEP modes fall through to it."""
