"""The DiaSafety safety classifier (Sun et al., Findings of ACL 2022): fit, metrics and report."""
