"""What every training method shares: data, pair sets and length-bucketed batches, the one
Trainer loop, torchrun integration and the losses written once."""
