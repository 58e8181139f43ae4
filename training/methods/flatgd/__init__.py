"""FlatGD (Khalatbari et al.): the safety objective and its jobs (experts, fine-tune)."""
